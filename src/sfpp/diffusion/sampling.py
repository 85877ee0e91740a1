"""Multi-step Euler sampling of a flow-matching model with classifier-free guidance.

This is the teacher's sampler: it draws videos for inspection and evaluation, and (with
``keep_sigmas``) records the noisy states of each ODE trajectory at chosen noise levels, the data of
the ODE-init stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sfpp.diffusion.schedule import FlowMatchSchedule, euler_step

__all__ = ["EulerSampler", "SampleResult", "guided_flow"]


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
        trajectory: Noisy states at the requested ``keep_sigmas``, ``(B, K, C, F, H, W)``, or ``None``.
        kept_sigmas: The grid sigmas at which the states were taken (nearest grid point to each request).
    """

    x0: torch.Tensor
    trajectory: torch.Tensor | None = None
    kept_sigmas: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EulerSampler:
    """Euler ODE sampler over the shifted flow-matching grid.

    Args:
        num_steps: Model evaluations (times 2 with CFG).
        shift: Timestep shift of the sampling grid.
        guidance_scale: Classifier-free guidance scale (1 disables it).
    """

    num_steps: int = 50
    shift: float = 3.0
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")

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
            keep_sigmas: Noise levels at which to record the state (e.g. the student's steps);
                each is matched to the nearest point of the grid.
            progress: Called as ``progress(step, num_steps)`` after every step.
        """
        sigmas = FlowMatchSchedule(shift=self.shift).sampling_sigmas(self.num_steps).tolist()
        keep_at = {min(range(len(sigmas) - 1), key=lambda i, s=s: abs(sigmas[i] - s)) for s in keep_sigmas}
        kept: list[torch.Tensor] = []
        x = noise
        for i in range(self.num_steps):
            if i in keep_at:
                kept.append(x)
            t = torch.full((x.shape[0],), sigmas[i] * 1000.0, device=x.device)
            flow = guided_flow(model, x, t, context, null_context, self.guidance_scale)
            x = euler_step(x, flow, sigmas[i], sigmas[i + 1])
            if progress is not None:
                progress(i + 1, self.num_steps)
        trajectory = torch.stack(kept, dim=1) if kept else None  # (B, K, C, F, H, W)
        return SampleResult(x0=x, trajectory=trajectory, kept_sigmas=[sigmas[i] for i in sorted(keep_at)])
