"""A DataLoader that resumes mid-epoch, so a resumed run sees the batches it would have seen.

Lightning saves and restores the state of any train dataloader that has ``state_dict`` and
``load_state_dict``. This loader walks its dataset in order and records how many batches the
training loop has consumed in the current epoch; after ``load_state_dict`` the next epoch starts
at that offset instead of at the beginning. It suits map-style datasets whose items depend only on
their index (the built-in world, prompt lists with a seeded order).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["OffsetSampler", "ResumableDataLoader"]


class OffsetSampler(Sampler[int]):
    """Indices ``offset, offset + 1, ..., len(dataset) - 1``; the offset applies to one pass."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.offset = 0

    def __iter__(self) -> Iterator[int]:
        start, self.offset = self.offset, 0
        return iter(range(start, self.length))

    def __len__(self) -> int:
        return self.length - self.offset


class ResumableDataLoader(DataLoader):
    """Sequential DataLoader with a mid-epoch ``state_dict`` (batches consumed this epoch).

    Lightning rebuilds train loaders with a sampler of its own in some cases (a
    ``DistributedSampler`` for several processes, a sequential one for ``overfit_batches``); the
    loader then uses that sampler and a resumed run restarts the epoch (with a warning), since a
    foreign sampler cannot be fast-forwarded.

    Args:
        dataset: Map-style dataset.
        batch_size: Items per batch.
        sampler: Only for Lightning's re-instantiation (see above).
        **kwargs: Other DataLoader arguments (``shuffle=True`` is refused: the order is fixed).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None, **kwargs: Any
    ) -> None:
        if kwargs.pop("shuffle", False):
            raise ValueError("ResumableDataLoader walks the dataset in order; shuffle=True is not supported")
        self._offset_sampler = OffsetSampler(len(dataset)) if sampler is None else None  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=sampler or self._offset_sampler, **kwargs)
        self._epoch_start = 0
        self._consumed = 0

    def __iter__(self) -> Iterator[Any]:
        offset = self._offset_sampler.offset if self._offset_sampler is not None else 0
        self._epoch_start = offset // self.batch_size
        self._consumed = self._epoch_start
        for batch in super().__iter__():
            self._consumed += 1
            yield batch
        self._consumed = 0

    def state_dict(self) -> dict[str, int]:
        """Batches handed out in the current epoch (Lightning saves this in checkpoints)."""
        return {"batches_consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next pass after the batches a checkpointed run had consumed."""
        if self._offset_sampler is None:
            warnings.warn(
                "this train loader uses a sampler injected by Lightning; the resumed run restarts the epoch",
                stacklevel=2,
            )
            return
        self._offset_sampler.offset = int(state["batches_consumed"]) * self.batch_size
