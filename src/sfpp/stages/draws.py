"""Random draws that a resumed run, on any rank count, repeats exactly.

Every stage draws its per-step random numbers from a generator seeded by ``(seed, stream, step,
micro-batch)`` (:func:`step_generator`), never from the global generator that
``seed_everything`` reseeds on every start. Per-sample draws are made for the whole global batch of
the update and each rank keeps its own rows (:func:`rows_of_global_batch`): rank ``r`` of ``W``
holds samples ``r, r + W, ...``, the layout of torch's ``DistributedSampler``. So a run interrupted
and resumed, or run on N processes with a local batch ``B``, draws what one uninterrupted process
with the batch ``N * B`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sfpp.utils.seeding import (
    CRITIC_REINJECTION_STREAM,
    PREFIX_STREAM,
    STUDENT_STREAM,
    SUPERVISED_STREAM,
    step_generator,
)

__all__ = [
    "CRITIC_REINJECTION_STREAM",
    "PREFIX_STREAM",
    "STUDENT_STREAM",
    "SUPERVISED_STREAM",
    "GlobalBatchDraws",
    "rows_of_global_batch",
    "step_generator",
]


def rows_of_global_batch(
    trainer: Any, local_batch: int, micro_batch: int = 0, micro_batches: int = 1
) -> tuple[slice | None, int | None]:
    """``(rows, global_batch)`` of this rank and micro-batch, or ``(None, None)`` for the whole batch.

    The global batch of one update is ``micro_batches x world x local_batch`` samples. Rank ``r``
    of ``W`` holds samples ``r, r + W, ...`` of the data (the layout of torch's
    ``DistributedSampler``, whose rank and size the strategy reports), and its micro-batch ``m``
    the ``m``-th run of ``local_batch`` of them: global rows ``(m * local_batch + i) * W + r``.
    One process with ``micro_batches = 1`` holds the whole batch. Every rank must have the same
    local batch.

    Args:
        trainer: The Lightning trainer (``None`` outside one: a single process).
        local_batch: Samples of this rank's batch.
        micro_batch: Index of this batch among the update's accumulated batches.
        micro_batches: Batches accumulated per update.
    """
    strategy = trainer.strategy if trainer is not None else None
    sampler_kwargs = getattr(strategy, "distributed_sampler_kwargs", None)
    world, rank = 1, 0
    if sampler_kwargs and sampler_kwargs["num_replicas"] > 1:
        world, rank = sampler_kwargs["num_replicas"], sampler_kwargs["rank"]
    if world == 1 and micro_batches == 1:
        return None, None
    span = local_batch * world  # samples of one micro-batch over all ranks
    return slice(micro_batch * span + rank, (micro_batch + 1) * span, world), span * micro_batches


class GlobalBatchDraws:
    """Per-sample draws of one update's global batch, this rank's and micro-batch's rows kept.

    Args:
        generator: The update's generator (:func:`step_generator` with micro-batch 0: every
            micro-batch of an update draws the same global batch and keeps other rows).
        local_batch: Samples of this rank's batch.
        rows: This batch's rows of the global batch (:func:`rows_of_global_batch`), ``None``: all.
        global_batch: Samples of the global batch (``None`` with ``rows=None``).
        device: Where the draws go (they are made on the CPU, the same on every device).
    """

    def __init__(
        self,
        generator: torch.Generator,
        local_batch: int,
        rows: slice | None = None,
        global_batch: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.generator = generator
        self.local_batch = local_batch
        self.rows = rows
        self.global_batch = local_batch if rows is None else global_batch
        self.device = device

    def _draw(self, draw: Callable[..., torch.Tensor], shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        full = draw(*kwargs.pop("args", ()), (self.global_batch, *shape), generator=self.generator, **kwargs)
        mine = full if self.rows is None else full[self.rows]
        return mine.to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform ``(B, *shape)`` in ``[0, 1)``."""
        return self._draw(torch.rand, shape)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal ``(B, *shape)``."""
        return self._draw(torch.randn, shape)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers ``(B, *shape)`` in ``[low, high)``."""
        return self._draw(torch.randint, shape, args=(low, high))

    def sigmas(self, sampler: Callable[..., torch.Tensor]) -> torch.Tensor:
        """``(B,)`` training noise levels from a :class:`~sfpp.diffusion.training.TrainingSigmas`."""
        full = sampler(self.global_batch, generator=self.generator)
        return (full if self.rows is None else full[self.rows]).to(self.device)
