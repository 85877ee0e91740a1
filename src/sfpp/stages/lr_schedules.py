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
    step: int, warmup_steps: int, total_steps: int, final_ratio: float, restarts: Sequence[int] = ()
) -> float:
    """The LR multiplier at ``step``: linear warm-up from 0 to 1, then a cosine down to ``final_ratio``.

    Past ``total_steps`` the multiplier stays at ``final_ratio``. Each step in ``restarts`` (within
    ``(0, total_steps)``) begins a new warm-up and cosine that ends at the next restart or at
    ``total_steps``.
    """
    bounds = [0, *sorted(r for r in restarts if 0 < r < total_steps), total_steps]
    start = max(b for b in bounds[:-1] if b <= step) if step >= 0 else 0
    end = bounds[bounds.index(start) + 1]
    step, total_steps = step - start, end - start
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_ratio: float = 0.05,
    restarts: Sequence[int] = (),
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
    if 2 * warmup_steps > total_steps:
        log.warning(
            "warm-up of %d steps in a %d-step run: warming up for %d",
            warmup_steps,
            total_steps,
            total_steps // 2,
        )
        warmup_steps = total_steps // 2
    return LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, final_ratio, restarts)
    )
