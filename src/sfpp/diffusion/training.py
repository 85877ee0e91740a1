"""Training-time choices of a flow-matching loss: where the noise levels fall and how errors weigh.

Two small components that the teacher stage takes from its config:

* :class:`TrainingSigmas`: the noise levels of a training batch, uniform or logit-normal, then
  shifted (``stage.timestep_sampler``);
* a loss weighting (``stage.loss_weighting``): a callable
  ``weighting(squared_error, x0, sigma, loss_space) -> (B,)`` that turns the per-position squared
  error into one loss per sample. :func:`mean_squared_error` (the default) weighs every position and
  level the same; :class:`MinSNRWeighting` is min-SNR-gamma.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from sfpp.diffusion.schedule import shift_sigma

__all__ = ["LossWeighting", "MinSNRWeighting", "TrainingSigmas", "mean_squared_error", "min_snr_weight"]


class TrainingSigmas:
    """Noise levels of a training batch: uniform or logit-normal, then shifted.

    ``u ~ U(0, 1)`` by default; with ``logit_normal = (mean, std)``, ``u = sigmoid(mean + std * z)``
    with ``z ~ N(0, 1)`` (Esser et al., 2024), which puts more of the batch at middle noise levels,
    where the layout of a sample is decided, and less at both ends. Either is then mapped by
    :func:`~sfpp.diffusion.schedule.shift_sigma`.

    Args:
        shift: Timestep shift applied to ``u`` (1.0: none).
        logit_normal: ``(mean, std)`` of ``logit(u)``, or ``None`` for uniform ``u``.

    Raises:
        ValueError: For a non-positive shift, or a ``logit_normal`` that is not ``[mean, std > 0]``.
    """

    def __init__(self, shift: float = 1.0, logit_normal: Sequence[float] | None = None) -> None:
        shift_sigma(0.5, shift)  # validates the shift
        if logit_normal is not None and (len(logit_normal) != 2 or not float(logit_normal[1]) > 0):
            raise ValueError(f"logit_normal must be [mean, std] with std > 0 (or null), got {logit_normal}")
        self.shift = float(shift)
        self.logit_normal = None if logit_normal is None else (float(logit_normal[0]), float(logit_normal[1]))

    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``batch_size`` levels (from ``generator``, else the global generator).

        Returns:
            ``(batch_size,)`` float32 levels in ``[0, 1]``.
        """
        if self.logit_normal is None:
            u = torch.rand(batch_size, device=device, generator=generator)
        else:
            mean, std = self.logit_normal
            u = torch.sigmoid(mean + std * torch.randn(batch_size, device=device, generator=generator))
        return shift_sigma(u, self.shift)

    def __repr__(self) -> str:
        return f"TrainingSigmas(shift={self.shift}, logit_normal={self.logit_normal})"


class LossWeighting(Protocol):
    """Turns per-position squared errors into one loss per sample."""

    def __call__(self, squared_error: Tensor, x0: Tensor, sigma: Tensor, loss_space: str) -> Tensor:
        """Per-sample losses ``(B,)`` of ``squared_error (B, C, F, H, W)``.

        ``x0`` is the regression target in clean-sample space (same shape), ``sigma`` the
        per-sample levels ``(B,)`` and ``loss_space`` ``"flow"`` or ``"x0"``, the space of the error.
        """
        ...


def mean_squared_error(squared_error: Tensor, x0: Tensor, sigma: Tensor, loss_space: str) -> Tensor:
    """The default weighting: each sample's mean squared error, every level alike."""
    return squared_error.flatten(1).mean(1)  # (B, C, F, H, W) -> (B,)


def min_snr_weight(sigma: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weight of a squared error in clean-sample (``x0``) space, scaled into ``(0, 1]``.

    ``w = min(SNR, gamma) / gamma`` with ``SNR = ((1 - sigma) / sigma) ** 2``, the signal-to-noise
    ratio of ``x_t``. Noisy levels, whose ``x0`` error is large and mostly irreducible, get small
    weights; levels cleaner than ``SNR = gamma`` all get weight 1 (Hang et al., "Efficient Diffusion
    Training via Min-SNR Weighting Strategy", 2023). A flow error is the ``x0`` error divided by
    ``sigma``, so the same objective in flow space has weight ``w * sigma ** 2``.

    Args:
        sigma: Noise levels in ``[0, 1]``, any shape.
        gamma: The SNR above which the weight stops growing, positive.

    Returns:
        Float32 weights of ``sigma``'s shape; 1 at ``sigma = 0``, 0 at ``sigma = 1``.

    Raises:
        ValueError: For a non-positive ``gamma``.
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    s = sigma.float()
    snr = (1.0 - s).square() / s.square().clamp_min(1e-12)  # inf-safe: sigma = 0 gives a huge SNR
    return snr.clamp(max=gamma) / gamma


class MinSNRWeighting:
    """Min-SNR-gamma loss weighting (:func:`min_snr_weight`), the same objective in either loss space.

    Args:
        gamma: The SNR above which the weight stops growing, positive.

    Raises:
        ValueError: For a non-positive ``gamma``.
    """

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, squared_error: Tensor, x0: Tensor, sigma: Tensor, loss_space: str) -> Tensor:
        """Each sample's mean squared error times its min-SNR weight (see :class:`LossWeighting`)."""
        weight = min_snr_weight(sigma, self.gamma)  # (B,), defined on the x0 error
        if loss_space == "flow":  # the flow error is the x0 error / sigma: same objective
            weight = weight * sigma.float().square()
        return squared_error.flatten(1).mean(1) * weight  # (B,)
