"""Learning-rate schedules for the stages' ``lr_scheduler`` partials (stepped every optimiser step)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine", "warmup_cosine_factor"]

log = logging.getLogger(__name__)


def warmup_cosine_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    final_ratio: float,
    restarts: Sequence[int] = (),
    phase_scales: Sequence[float] = (),
) -> float:
    """The LR multiplier at ``step``: linear warm-up from 0 to 1, then a cosine down to ``final_ratio``.

    Past ``total_steps`` the multiplier stays at ``final_ratio``. Each step in ``restarts`` (within
    ``(0, total_steps)``) begins a new warm-up and cosine that ends at the next restart or at
    ``total_steps``. With ``phase_scales`` (one value per segment of this run, in time order),
    the whole curve of the ``i``-th segment is multiplied by ``phase_scales[i]``.
    """
    kept = sorted({r for r in restarts if 0 < r < total_steps})
    bounds = [0, *kept, total_steps]
    start = max(b for b in bounds[:-1] if b <= step) if step >= 0 else 0
    phase = bounds.index(start)
    end = bounds[phase + 1]
    scale = float(phase_scales[phase]) if phase_scales else 1.0
    step, total_steps = step - start, end - start
    if step < warmup_steps:
        return scale * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return scale * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_ratio: float = 0.05,
    restarts: Sequence[int] = (),
    phase_scales: Sequence[float] = (),
) -> LambdaLR:
    """Linear warm-up for ``warmup_steps`` then cosine decay to ``final_ratio`` of the LR at ``total_steps``.

    Args:
        optimizer: The optimiser whose learning rates are scaled.
        warmup_steps: Steps of the linear warm-up (0: none).
        total_steps: Step at which the cosine reaches ``final_ratio`` (usually ``trainer.max_steps``).
        final_ratio: LR at the end, as a fraction of the base LR, in ``[0, 1]``.
        restarts: Steps at which a new warm-up and cosine begin (e.g. where the data switches from
            image batches to video batches). A restart at step 0 (no image batches) or at or past
            ``total_steps`` (a shortened run) changes nothing.
        phase_scales: Peak of each phase's curve as a fraction of the base LR, one per phase
            (``len(restarts) + 1`` values), e.g. ``[1.0, 0.5]`` to give the video batches after
            the image batches half the images' learning rate. Empty (default): 1 for every phase.
            Phases whose restart falls outside the run keep their place in the list.

    A run shorter than twice the warm-up (a smoke test with ``trainer.max_steps=2``) warms up for half
    of its steps instead, with a warning.

    Raises:
        ValueError: For a negative warm-up, ``total_steps < 1`` or a ratio outside ``[0, 1]``.
    """
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
    restarts = tuple(int(r) for r in restarts)
    if any(r < 0 for r in restarts):
        raise ValueError(f"restarts must be steps >= 0, got {restarts}")
    phase_scales = tuple(float(scale) for scale in phase_scales)
    if phase_scales and len(phase_scales) != len(restarts) + 1:
        raise ValueError(
            f"phase_scales needs one value per phase, len(restarts) + 1 = {len(restarts) + 1}; got {phase_scales}"
        )
    if any(not scale > 0 for scale in phase_scales):
        raise ValueError(f"phase_scales must be positive, got {phase_scales}")
    if 2 * warmup_steps > total_steps:
        log.warning(
            "warm-up of %d steps in a %d-step run: warming up for %d",
            warmup_steps,
            total_steps,
            total_steps // 2,
        )
        warmup_steps = total_steps // 2
    scales = _scales_in_run(restarts, total_steps, phase_scales)
    return LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, final_ratio, restarts, scales),
    )


def _scales_in_run(
    restarts: Sequence[int], total_steps: int, phase_scales: Sequence[float]
) -> tuple[float, ...]:
    """The scales of the phases a ``total_steps`` run goes through, in segment order.

    These are :func:`warmup_cosine_factor`'s segments: a phase that ends before it begins (a
    restart at step 0) or begins at or past ``total_steps`` has no segment.
    """
    if not phase_scales:
        return ()
    starts = [0, *sorted(restarts)]
    ends = [*starts[1:], total_steps]
    return tuple(
        scale
        for start, end, scale in zip(starts, ends, phase_scales, strict=True)
        if start < total_steps and min(end, total_steps) > start
    )
