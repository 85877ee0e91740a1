"""Flow-matching noise schedule in the Wan2.1 / Self-Forcing conventions.

Conventions used throughout :mod:`sfpp`:

* ``sigma`` in ``[0, 1]`` is the noise level: ``x_t = (1 - sigma) * x0 + sigma * noise``
  (``sigma = 0`` is clean data, ``sigma = 1`` pure Gaussian noise).
* A timestep is ``t = sigma * num_train_timesteps`` (``0..1000`` for Wan2.1); the *shift* is applied
  when a grid of sigmas is built (:meth:`FlowMatchSchedule.warp_timesteps`,
  :meth:`FlowMatchSchedule.sampling_sigmas`), never by the ``t <-> sigma`` conversions.
* The network predicts the flow (velocity) ``v = noise - x0``, so ``dx_t / dsigma = v`` and
  ``x0 = x_t - sigma * v``.
* Video tensors are laid out ``(B, C, F, H, W)``. Every ``sigma`` argument may be a Python number, a
  0-d tensor, a per-sample ``(B,)`` tensor or a per-frame ``(B, F)`` tensor (see :func:`expand_sigma`).

Sampling grid and diffusers
---------------------------
:meth:`FlowMatchSchedule.sampling_sigmas` returns Wan's own Euler grid (``get_sampling_sigmas`` in the
Wan2.1 code, also Self-Forcing's ``FlowMatchScheduler`` with ``sigma_min=0, extra_one_step=True``)::

    sigmas = shift_sigma(linspace(1, 0, n + 1), shift)   # n + 1 values, sigmas[-1] == 0

diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n)`` builds a different grid.
Its constructor stores the *shifted* 1000-step training table ``shift_sigma(k / 1000)``, k = 1000..1, and
takes ``sigma_max = 1`` and ``sigma_min = shift_sigma(1 / 1000)`` from it (0.00498 at shift 5).
``set_timesteps(n)`` then uses ``linspace(sigma_max, sigma_min, n)`` (n points, the last one near 0,
not ``n + 1`` points ending at 0), shifts that again (so ``sigma_min`` is shifted twice) and appends a
terminal 0. At shift 5, n = 4 this gives ``[1, 0.9097, 0.7173, 0.0244, 0]`` where Wan uses
``[1, 0.9375, 0.8333, 0.625, 0]``: the last model call happens at almost no noise, so one of the
few steps is wasted. We follow Wan. The two agree exactly when diffusers is given the unshifted
grid explicitly, ``set_timesteps(sigmas=linspace(1, 0, n + 1)[:n])`` (diffusers shifts it once), and
its ``step()`` is then the same Euler update as :func:`euler_step`. (diffusers'
``UniPCMultistepScheduler(use_flow_sigmas=True)``, the WanPipeline default, is closer to Wan:
``linspace(1, 1/1000, n + 1)[:-1]`` shifted, first sigma lowered by 1e-6, integer timesteps.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias, overload

import torch
from torch import Tensor

from sfpp.models.config import NUM_TRAIN_TIMESTEPS

__all__ = [
    "FlowMatchSchedule",
    "SigmaLike",
    "add_noise",
    "euler_step",
    "expand_sigma",
    "flow_from_x0",
    "flow_target",
    "sigma_from_timestep",
    "timestep_from_sigma",
    "NUM_TRAIN_TIMESTEPS",
    "noise_from_x0",
    "shift_sigma",
    "unshift_sigma",
    "x0_from_flow",
    "x0_from_noise",
]

SigmaLike: TypeAlias = float | Tensor
"""A noise level: a Python number, a 0-d tensor, a ``(B,)`` or a per-frame ``(B, F)`` tensor."""

DEFAULT_EPS = 1e-6
"""Smallest denominator the conversions that divide by ``sigma`` or ``1 - sigma`` accept."""


def _check_shift(shift: float) -> None:
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0 (1.0 = no shift, Wan2.1 uses 5.0), got {shift}")


def _as_float_tensor(value: float | Tensor) -> Tensor:
    """Tensor view of ``value``; integer or boolean tensors become the default float dtype."""
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


@overload
def shift_sigma(sigma: float, shift: float) -> float: ...


@overload
def shift_sigma(sigma: Tensor, shift: float) -> Tensor: ...


def shift_sigma(sigma: float | Tensor, shift: float) -> float | Tensor:
    """Apply the timestep shift ``sigma' = s * sigma / (1 + (s - 1) * sigma)``.

    The map fixes 0 and 1, is strictly increasing on ``[0, 1]`` and, for ``shift > 1``, moves every
    interior sigma towards 1 (more time is spent at high noise). ``shift = 1`` is the identity.

    Args:
        sigma: Noise level(s) in ``[0, 1]``; a Python number or a tensor of any shape.
        shift: Shift factor ``s > 0``.

    Returns:
        The shifted sigma, a float for a float input, else a floating tensor of the input's shape.

    Raises:
        ValueError: If ``shift`` is not a finite positive number.
    """
    _check_shift(shift)
    if isinstance(sigma, Tensor):
        sigma = _as_float_tensor(sigma)
    return shift * sigma / (1 + (shift - 1) * sigma)


@overload
def unshift_sigma(sigma: float, shift: float) -> float: ...


@overload
def unshift_sigma(sigma: Tensor, shift: float) -> Tensor: ...


def unshift_sigma(sigma: float | Tensor, shift: float) -> float | Tensor:
    """Invert :func:`shift_sigma`: ``sigma = sigma' / (s - (s - 1) * sigma')``.

    Args:
        sigma: Shifted noise level(s) in ``[0, 1]``; a Python number or a tensor of any shape.
        shift: The shift factor ``s > 0`` that produced ``sigma``.

    Returns:
        The unshifted sigma, a float for a float input, else a floating tensor of the input's shape.

    Raises:
        ValueError: If ``shift`` is not a finite positive number.
    """
    _check_shift(shift)
    if isinstance(sigma, Tensor):
        sigma = _as_float_tensor(sigma)
    return sigma / (shift - (shift - 1) * sigma)


def expand_sigma(sigma: SigmaLike, like: Tensor, *, frame_dim: int = 2) -> Tensor:
    """Reshape a noise level so that it broadcasts against ``like``.

    Accepted shapes, for ``like`` of shape ``(B, C, F, H, W)`` (or any ``(B, ...)`` for the first three):

    * a Python number or 0-d tensor: one sigma for everything, returned as ``(1, 1, 1, 1, 1)``;
    * ``(B,)`` (or ``(1,)``): one sigma per sample, returned as ``(B, 1, 1, 1, 1)``;
    * ``(B, F)`` (either size may be 1): one sigma per sample and frame, returned as
      ``(B, 1, F, 1, 1)``; needs ``like.ndim >= 3``, the frame axis is ``frame_dim``;
    * a tensor with ``like.ndim`` dims that already broadcasts to ``like.shape``: returned unchanged
      (so an expanded sigma can be passed again, and other layouts can be expanded once up front
      with ``frame_dim``).

    The result is on ``like``'s device with dtype ``promote_types(like.dtype, float32)``: arithmetic
    with half-precision tensors then runs in float32, and the callers in this module cast their
    result back to the input dtype.

    Args:
        sigma: Noise level(s), see above.
        like: The tensor sigma will multiply.
        frame_dim: Axis of ``like`` that a ``(B, F)`` sigma's second dim maps to (2 for
            ``(B, C, F, H, W)``; 1 for a ``(B, F, C, H, W)`` layout).

    Returns:
        ``sigma`` as a tensor with ``like.ndim`` dims (or 0 dims if ``like`` is 0-d).

    Raises:
        ValueError: If ``sigma``'s shape does not match ``like`` under the rules above, or
            ``frame_dim`` is not an axis of ``like`` after the batch axis.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)
    value = torch.as_tensor(sigma, device=like.device).to(dtype)
    shape = tuple(like.shape)

    def _error() -> ValueError:
        return ValueError(
            f"sigma of shape {tuple(value.shape)} cannot be broadcast to a tensor of shape {shape}: pass a "
            f"scalar, a per-sample (B,) tensor, a per-frame (B, F) tensor (F = axis frame_dim={frame_dim} "
            f"of a (B, C, F, H, W) tensor), or a tensor with {like.ndim} dims that broadcasts to {shape}"
        )

    if value.ndim == 0:
        return value.reshape((1,) * like.ndim)  # () -> (1, ..., 1)
    if like.ndim == 0:
        raise _error()
    batch = shape[0]
    if value.ndim == 1:
        if value.shape[0] not in (1, batch):
            raise _error()
        return value.reshape(value.shape[0], *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, ..., 1)
    if value.ndim == 2 and like.ndim >= 3:
        axis = frame_dim + like.ndim if frame_dim < 0 else frame_dim
        if not 1 <= axis < like.ndim:
            raise ValueError(
                f"frame_dim={frame_dim} is not a non-batch axis of a tensor of shape {shape}; "
                "use 2 for (B, C, F, H, W) or 1 for (B, F, C, H, W)"
            )
        if value.shape[0] not in (1, batch) or value.shape[1] not in (1, shape[axis]):
            raise _error()
        target = [1] * like.ndim
        target[0], target[axis] = value.shape[0], value.shape[1]
        return value.reshape(target)  # (B, F) -> (B, 1, F, 1, 1) for frame_dim=2
    if value.ndim == like.ndim:
        try:
            broadcast = torch.broadcast_shapes(value.shape, like.shape)
        except RuntimeError:
            raise _error() from None
        if tuple(broadcast) != shape:
            raise _error()
        return value
    raise _error()


def timestep_from_sigma(sigma: SigmaLike, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """The timestep at which a model is called for noise level(s) ``sigma``: ``sigma * N`` (no shift).

    Args:
        sigma: Noise level(s) in ``[0, 1]``.
        num_train_timesteps: The timestep scale ``N`` (1000 for Wan2.1).

    Returns:
        A floating tensor of ``sigma``'s shape (on its device when it is a tensor).
    """
    return _as_float_tensor(sigma) * num_train_timesteps


def sigma_from_timestep(t: float | Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """The noise level of timestep(s) ``t``: ``t / N`` (no shift); integer tensors are accepted."""
    return _as_float_tensor(t) / num_train_timesteps


def _check_same_shape(func: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{func}: {name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _out_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.promote_types(a.dtype, b.dtype)


def _check_denominator(denominator: Tensor, *, func: str, what: str, hint: str, eps: float) -> None:
    """Refuse a denominator below ``eps``, without a host sync on an accelerator.

    On the CPU the check raises ``ValueError`` at once. On an accelerator it is queued with
    :func:`torch._assert_async`, so the hot path never waits for the device; a violation then fails
    the next synchronising call with a device-side assertion.
    """
    if denominator.device.type != "cpu":
        torch._assert_async((denominator.abs() >= eps).all(), f"{func} divides by {what} < eps={eps}; {hint}")
        return
    smallest = denominator.abs().min()
    if not bool(smallest >= eps):
        raise ValueError(
            f"{func} divides by {what}, which must be >= eps={eps} everywhere, got {smallest.item():.3g}; {hint}"
        )


def add_noise(x0: Tensor, noise: Tensor, sigma: SigmaLike) -> Tensor:
    """Noise clean data to level ``sigma``: ``x_t = (1 - sigma) * x0 + sigma * noise``.

    Args:
        x0: Clean sample, e.g. ``(B, C, F, H, W)``.
        noise: Gaussian noise of the same shape.
        sigma: Noise level(s) in ``[0, 1]``; scalar, ``(B,)`` or per-frame ``(B, F)``
            (see :func:`expand_sigma`).

    Returns:
        ``x_t`` with the shape of ``x0`` and dtype ``promote_types(x0.dtype, noise.dtype)``.

    Raises:
        ValueError: If ``x0`` and ``noise`` differ in shape or ``sigma`` does not broadcast.
    """
    _check_same_shape("add_noise", "x0", x0, "noise", noise)
    s = expand_sigma(sigma, x0)
    return ((1 - s) * x0 + s * noise).to(_out_dtype(x0, noise))


def flow_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Flow-matching regression target ``v = noise - x0`` (constant along the straight path).

    Args:
        x0: Clean sample.
        noise: The noise that was mixed into ``x0`` (same shape).

    Returns:
        ``noise - x0``.

    Raises:
        ValueError: If the shapes differ.
    """
    _check_same_shape("flow_target", "x0", x0, "noise", noise)
    return noise - x0


def x0_from_flow(flow: Tensor, x_t: Tensor, sigma: SigmaLike) -> Tensor:
    """Clean-sample estimate from a flow prediction: ``x0 = x_t - sigma * flow``.

    Args:
        flow: Predicted flow ``noise - x0``.
        x_t: Noisy sample at level ``sigma`` (same shape).
        sigma: Noise level(s) of ``x_t`` (see :func:`expand_sigma`).

    Returns:
        The ``x0`` estimate, in the promoted dtype of ``flow`` and ``x_t``.

    Raises:
        ValueError: If the shapes differ or ``sigma`` does not broadcast.
    """
    _check_same_shape("x0_from_flow", "flow", flow, "x_t", x_t)
    s = expand_sigma(sigma, x_t)
    return (x_t - s * flow).to(_out_dtype(flow, x_t))


def flow_from_x0(x0: Tensor, x_t: Tensor, sigma: SigmaLike, *, eps: float = DEFAULT_EPS) -> Tensor:
    """Flow implied by a clean-sample estimate: ``flow = (x_t - x0) / sigma``.

    At ``sigma = 0`` the flow is undefined (``x_t == x0``), so every sigma must be at least ``eps``;
    the check is a host-device sync on accelerators.

    Args:
        x0: Clean-sample estimate.
        x_t: Noisy sample at level ``sigma`` (same shape).
        sigma: Noise level(s) of ``x_t`` (see :func:`expand_sigma`).
        eps: Smallest accepted sigma.

    Returns:
        The flow, in the promoted dtype of ``x0`` and ``x_t``.

    Raises:
        ValueError: If the shapes differ, ``sigma`` does not broadcast or some sigma is below ``eps``.
    """
    _check_same_shape("flow_from_x0", "x0", x0, "x_t", x_t)
    s = expand_sigma(sigma, x_t)
    _check_denominator(
        s,
        func="flow_from_x0",
        what="sigma",
        eps=eps,
        hint="the flow is undefined on clean samples (sigma = 0)",
    )
    return ((x_t - x0) / s).to(_out_dtype(x0, x_t))


def noise_from_x0(x0: Tensor, x_t: Tensor, sigma: SigmaLike, *, eps: float = DEFAULT_EPS) -> Tensor:
    """Noise implied by a clean-sample estimate: ``noise = (x_t - (1 - sigma) * x0) / sigma``.

    At ``sigma = 0`` the noise cannot be recovered, so every sigma must be at least ``eps``; the
    check is a host-device sync on accelerators.

    Args:
        x0: Clean-sample estimate.
        x_t: Noisy sample at level ``sigma`` (same shape).
        sigma: Noise level(s) of ``x_t`` (see :func:`expand_sigma`).
        eps: Smallest accepted sigma.

    Returns:
        The noise, in the promoted dtype of ``x0`` and ``x_t``.

    Raises:
        ValueError: If the shapes differ, ``sigma`` does not broadcast or some sigma is below ``eps``.
    """
    _check_same_shape("noise_from_x0", "x0", x0, "x_t", x_t)
    s = expand_sigma(sigma, x_t)
    _check_denominator(
        s, func="noise_from_x0", what="sigma", eps=eps, hint="the noise cannot be recovered at sigma = 0"
    )
    return ((x_t - (1 - s) * x0) / s).to(_out_dtype(x0, x_t))


def x0_from_noise(noise: Tensor, x_t: Tensor, sigma: SigmaLike, *, eps: float = DEFAULT_EPS) -> Tensor:
    """Clean sample implied by a noise estimate: ``x0 = (x_t - sigma * noise) / (1 - sigma)``.

    At ``sigma = 1`` ``x_t`` is pure noise and ``x0`` cannot be recovered, so every ``1 - sigma``
    must be at least ``eps``; the check is a host-device sync on accelerators.

    Args:
        noise: Noise estimate.
        x_t: Noisy sample at level ``sigma`` (same shape).
        sigma: Noise level(s) of ``x_t`` (see :func:`expand_sigma`).
        eps: Smallest accepted ``1 - sigma``.

    Returns:
        The ``x0`` estimate, in the promoted dtype of ``noise`` and ``x_t``.

    Raises:
        ValueError: If the shapes differ, ``sigma`` does not broadcast or some ``1 - sigma`` is
            below ``eps``.
    """
    _check_same_shape("x0_from_noise", "noise", noise, "x_t", x_t)
    s = expand_sigma(sigma, x_t)
    _check_denominator(
        1 - s,
        func="x0_from_noise",
        what="1 - sigma",
        eps=eps,
        hint="x0 cannot be recovered from pure noise (sigma = 1); use x0_from_flow",
    )
    return ((x_t - s * noise) / (1 - s)).to(_out_dtype(noise, x_t))


def euler_step(x_t: Tensor, flow: Tensor, sigma: SigmaLike, sigma_next: SigmaLike) -> Tensor:
    """One Euler step of the flow ODE: ``x_next = x_t + (sigma_next - sigma) * flow``.

    With ``sigma_next = 0`` this returns the clean estimate :func:`x0_from_flow`.

    Args:
        x_t: Sample at level ``sigma``.
        flow: Predicted flow at ``(x_t, sigma)`` (same shape).
        sigma: Current noise level(s) (see :func:`expand_sigma`).
        sigma_next: Target noise level(s), same accepted shapes.

    Returns:
        The sample at ``sigma_next``, in the promoted dtype of ``x_t`` and ``flow``.

    Raises:
        ValueError: If the shapes differ or a sigma does not broadcast.
    """
    _check_same_shape("euler_step", "x_t", x_t, "flow", flow)
    step = expand_sigma(sigma_next, x_t) - expand_sigma(sigma, x_t)
    return (x_t + step * flow).to(_out_dtype(x_t, flow))


@dataclass(frozen=True)
class FlowMatchSchedule:
    """Timestep grids and conversions of a shifted flow-matching schedule.

    The noise / flow conversions (:func:`add_noise`, :func:`x0_from_flow`, ...) do not depend on the
    settings: they are the module's functions, not methods.

    Args:
        num_train_timesteps: Timestep scale: ``t = sigma * num_train_timesteps`` (1000 for Wan2.1).
        shift: Timestep shift used when building grids (1.0 = none; Wan2.1 few-step students use 5.0).
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0

    def __post_init__(self) -> None:
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1 (Wan2.1: 1000), got {n!r}")
        _check_shift(self.shift)

    def apply_shift(self, sigma: float | Tensor) -> Tensor:
        """Shift unshifted sigma(s) with this schedule's ``shift`` (see :func:`shift_sigma`).

        Args:
            sigma: Unshifted noise level(s) in ``[0, 1]``.

        Returns:
            The shifted noise level(s), same shape.
        """
        return shift_sigma(_as_float_tensor(sigma), self.shift)

    def sigma_from_timestep(self, t: float | Tensor) -> Tensor:
        """Noise level of timestep(s): ``sigma = t / num_train_timesteps`` (no shift applied).

        Args:
            t: Timestep(s) on the ``0..num_train_timesteps`` scale; integer tensors are accepted.

        Returns:
            A floating tensor of the same shape.
        """
        return sigma_from_timestep(t, self.num_train_timesteps)

    def timestep_from_sigma(self, sigma: float | Tensor) -> Tensor:
        """Timestep(s) of noise level(s): ``t = sigma * num_train_timesteps`` (no shift applied).

        Args:
            sigma: Noise level(s) in ``[0, 1]``.

        Returns:
            A floating tensor of the same shape.
        """
        return timestep_from_sigma(sigma, self.num_train_timesteps)

    def warp_timesteps(self, steps: Sequence[float]) -> Tensor:
        """Warp a few-step timestep list through the shift (Self-Forcing's ``warp_denoising_step``).

        Each step ``s`` becomes ``N * shift_sigma(s / N)`` with ``N = num_train_timesteps``; for
        integer steps this is the entry Self-Forcing reads from its shifted 1000-step training table.
        Example, shift 5: ``[1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625]``.

        Args:
            steps: Student denoising timesteps, noisiest first, each in ``(0, N]``.

        Returns:
            A float32 tensor of the warped timesteps, same length.

        Raises:
            ValueError: If ``steps`` is empty, a step is outside ``(0, N]`` or the list is not strictly
                decreasing.
        """
        n = self.num_train_timesteps
        values = [float(s) for s in steps]
        if not values:
            raise ValueError(
                "steps is empty; give the student's denoising timesteps, e.g. [1000, 750, 500, 250]"
            )
        for i, value in enumerate(values):
            if not 0 < value <= n:
                raise ValueError(
                    f"steps[{i}] = {value} is outside (0, num_train_timesteps={n}]; "
                    "denoising timesteps must be positive (the clean timestep 0 is implicit)"
                )
        for i in range(len(values) - 1):
            if not values[i] > values[i + 1]:
                raise ValueError(
                    f"steps must be strictly decreasing (noisiest first), but steps[{i}] = {values[i]} "
                    f"and steps[{i + 1}] = {values[i + 1]}"
                )
        sigma = torch.tensor(values, dtype=torch.float64) / n
        return (shift_sigma(sigma, self.shift) * n).to(torch.float32)

    def sampling_sigmas(self, num_inference_steps: int) -> Tensor:
        """Euler sampling grid of the teacher: ``shift_sigma(linspace(1, 0, n + 1))``.

        This is Wan2.1's sampler grid; it starts at exactly 1 and ends at exactly 0. It is *not*
        diffusers' default ``FlowMatchEulerDiscreteScheduler.set_timesteps(n)`` grid (see the module
        docstring); step ``i`` of a sampler evaluates the model at ``sigmas[i]`` and moves to
        ``sigmas[i + 1]``.

        Args:
            num_inference_steps: Number of sampler steps ``n >= 1``.

        Returns:
            A float32 tensor of ``n + 1`` decreasing sigmas.

        Raises:
            ValueError: If ``num_inference_steps`` is not an integer >= 1.
        """
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {n!r}")
        base = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
        return shift_sigma(base, self.shift).to(torch.float32)

    def sampling_timesteps(self, num_inference_steps: int) -> Tensor:
        """Timesteps at which the sampler evaluates the model: ``sampling_sigmas(n)[:-1] * N``.

        Args:
            num_inference_steps: Number of sampler steps ``n >= 1``.

        Returns:
            A float32 tensor of ``n`` decreasing timesteps, the first equal to ``num_train_timesteps``.

        Raises:
            ValueError: If ``num_inference_steps`` is not an integer >= 1.
        """
        return self.timestep_from_sigma(self.sampling_sigmas(num_inference_steps)[:-1])
