"""Multi-step Euler sampling of a flow-matching model with classifier-free guidance.

This is the teacher's sampler: it draws videos for inspection and evaluation, and (with
``keep_sigmas``) records the noisy states of each ODE trajectory at chosen noise levels, the data of
the ODE-init stage. Requested noise levels are inserted into the integration grid, so the states
are recorded exactly at them (at the cost of one extra model call per inserted level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sfpp.diffusion.schedule import FlowMatchSchedule, euler_step, timestep_from_sigma

__all__ = ["KEEP_SIGMA_TOLERANCE", "EulerSampler", "SampleResult", "guided_flow"]

KEEP_SIGMA_TOLERANCE = 1e-6
"""A requested ``keep_sigmas`` level this close to a grid point is taken at that point (not inserted)."""


def guided_flow(
    model: nn.Module,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Flow prediction with classifier-free guidance ``uncond + g * (cond - uncond)``.

    The conditional and unconditional passes run as one batch. With ``guidance_scale == 1`` or no
    ``null_context`` only the conditional pass runs.

    Args:
        model: Flow predictor called as ``model(x_t, timestep, context)``.
        x_t: Noisy latents ``(B, C, F, H, W)``.
        timestep: ``(B,)`` or ``(B, F)``.
        context: Conditional text embeddings ``(B, L, D)``.
        null_context: Unconditional embeddings ``(B, L, D)``.
        guidance_scale: CFG scale ``g``.
    """
    if null_context is None or guidance_scale == 1.0:
        return model(x_t, timestep, context)
    flow = model(
        torch.cat([x_t, x_t]), torch.cat([timestep, timestep]), torch.cat([context, null_context])
    )  # (2B, C, F, H, W)
    cond, uncond = flow.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@dataclass
class SampleResult:
    """Output of :meth:`EulerSampler.sample`.

    Attributes:
        x0: Final clean latents ``(B, C, F, H, W)``.
        trajectory: Noisy states at the requested ``keep_sigmas``, ``(B, K, C, F, H, W)``, in the order
            of the request, or ``None`` when nothing was requested.
        kept_sigmas: The noise levels of the states: exactly the requested ``keep_sigmas``.
    """

    x0: torch.Tensor
    trajectory: torch.Tensor | None = None
    kept_sigmas: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EulerSampler:
    """Euler ODE sampler over the shifted flow-matching grid.

    Args:
        num_steps: Steps of the shifted grid: model evaluations (times 2 with CFG), plus one per
            ``keep_sigmas`` level that :meth:`sample` inserts into the grid.
        shift: Timestep shift of the sampling grid.
        guidance_scale: Classifier-free guidance scale (1 disables it).
    """

    num_steps: int = 50
    shift: float = 3.0
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")

    def grid(self, keep_sigmas: Sequence[float] = ()) -> list[float]:
        """The integration grid: the shifted Euler grid with ``keep_sigmas`` inserted.

        The grid is the sorted (descending) union of
        :meth:`~sfpp.diffusion.schedule.FlowMatchSchedule.sampling_sigmas` and ``keep_sigmas``;
        a requested level within ``KEEP_SIGMA_TOLERANCE`` of a grid point is that grid point.
        Every inserted level adds one step (one model call, two with CFG).

        Args:
            keep_sigmas: Noise levels in ``[0, 1]`` that must be points of the grid.

        Returns:
            Decreasing sigmas from 1 to 0; ``len(grid) - 1`` steps.

        Raises:
            ValueError: If a requested level lies outside ``[0, 1]``.
        """
        grid = FlowMatchSchedule(shift=self.shift).sampling_sigmas(self.num_steps).tolist()
        for sigma in keep_sigmas:
            sigma = float(sigma)
            if not 0.0 <= sigma <= 1.0:
                raise ValueError(
                    f"keep_sigmas must lie in [0, 1] (sigma = timestep / 1000), got {sigma}; "
                    "pass noise levels, not timesteps"
                )
            if all(abs(sigma - point) > KEEP_SIGMA_TOLERANCE for point in grid):
                grid.append(sigma)
        return sorted(grid, reverse=True)

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        noise: torch.Tensor,
        context: torch.Tensor,
        null_context: torch.Tensor | None = None,
        keep_sigmas: Sequence[float] = (),
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleResult:
        """Integrate from ``noise`` (sigma 1) to clean latents.

        Args:
            model: Flow predictor ``model(x_t, timestep, context)``.
            noise: ``(B, C, F, H, W)`` standard Gaussian noise (seed it for reproducibility).
            context: Text embeddings ``(B, L, D)``.
            null_context: Unconditional embeddings for CFG.
            keep_sigmas: Noise levels at which to record the state (e.g. the student's steps,
                :attr:`~sfpp.diffusion.rollout.FewStepSampler.sigmas`). They are inserted into the
                integration grid (see :meth:`grid`), so each state is taken exactly at its level;
                the number of steps, hence model calls, grows by the number of inserted levels.
                ``1`` records the noise itself, ``0`` the final clean latents.
            progress: Called as ``progress(step, num_steps)`` after every step, ``num_steps`` being
                the steps of the grid actually integrated.

        Returns:
            The clean latents and, with ``keep_sigmas``, the recorded states in request order.
        """
        sigmas = self.grid(keep_sigmas)
        num_steps = len(sigmas) - 1
        # Each request maps to the index of its grid point (the state *before* step i is at sigmas[i]).
        keep_at = [min(range(len(sigmas)), key=lambda i, s=float(s): abs(sigmas[i] - s)) for s in keep_sigmas]
        states: dict[int, torch.Tensor] = {}
        x = noise
        for i in range(num_steps):
            if i in keep_at:
                states[i] = x
            t = timestep_from_sigma(torch.full((x.shape[0],), sigmas[i], device=x.device))
            flow = guided_flow(model, x, t, context, null_context, self.guidance_scale)
            x = euler_step(x, flow, sigmas[i], sigmas[i + 1])
            if progress is not None:
                progress(i + 1, num_steps)
        states[num_steps] = x
        kept = [states[i] for i in keep_at]
        trajectory = torch.stack(kept, dim=1) if kept else None  # (B, K, C, F, H, W)
        return SampleResult(x0=x, trajectory=trajectory, kept_sigmas=[float(s) for s in keep_sigmas])
