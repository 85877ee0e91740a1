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

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from sfpp.utils.seeding import derive_seed

__all__ = ["OffsetSampler", "ResumableDataLoader", "ResumableDistributedSampler", "ShuffledPasses"]


class ShuffledPasses(Dataset):
    """Many shuffled passes over a dataset as one long sequence: item ``k`` depends only on ``k``.

    Pass ``p`` visits the dataset in the order of a permutation seeded by ``(seed, p)``, so a
    :class:`ResumableDataLoader` over it serves, after a resume, the shuffled batches an
    uninterrupted run would have seen (a shuffling DataLoader's generator state is not saved).
    Only whole batches of each pass are served (``batch_size`` divides the length given to the
    loader): a batch never mixes two passes, as with ``drop_last=True``.

    Args:
        dataset: Map-style dataset.
        batch_size: Items per batch (each pass keeps ``len(dataset) // batch_size`` whole batches).
        seed: Seed of the permutations.
        passes: Passes in the sequence (one Lightning epoch; training usually stops by ``max_steps``).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, passes: int = 1000) -> None:
        self.dataset = dataset
        self.per_pass = len(dataset) // batch_size * batch_size  # type: ignore[arg-type]
        if self.per_pass == 0:
            raise ValueError(f"a dataset of {len(dataset)} items makes no full batch of {batch_size}")  # type: ignore[arg-type]
        self.seed = seed
        self.passes = passes
        self._order: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return self.per_pass * self.passes

    def _permutation(self, index: int) -> list[int]:
        if self._order is None or self._order[0] != index:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, index))
            self._order = (index, torch.randperm(len(self.dataset), generator=generator).tolist())  # type: ignore[arg-type]
        return self._order[1]

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.dataset[self._permutation(index // self.per_pass)[index % self.per_pass]]


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` whose next pass can skip the indices a checkpointed run had read.

    The epoch's order is the ``DistributedSampler``'s (a permutation seeded by ``seed + epoch``, or
    the dataset's order), so skipping its first ``offset`` indices gives the rest of the epoch an
    uninterrupted run would have read. Lightning keeps a ``DistributedSampler`` of a loader (it does
    not replace it), and :class:`ResumableDataLoader` turns the one Lightning injects into this one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offset = 0

    @classmethod
    def like(cls, sampler: DistributedSampler) -> ResumableDistributedSampler:
        """The same shard and order as ``sampler``."""
        return cls(
            sampler.dataset,
            num_replicas=sampler.num_replicas,
            rank=sampler.rank,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
            drop_last=sampler.drop_last,
        )

    def __iter__(self) -> Iterator[int]:
        start, self.offset = self.offset, 0
        indices = list(super().__iter__())
        return iter(indices[start:])

    def __len__(self) -> int:
        return super().__len__() - self.offset


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

    With several processes Lightning rebuilds train loaders with a ``DistributedSampler`` of its
    own; the loader turns it (and any ``DistributedSampler`` it is given, e.g. a seeded shuffling
    one) into a :class:`ResumableDistributedSampler` of the same shard and order, so every rank
    resumes mid-epoch too. A sampler of another kind (a sequential one for ``overfit_batches``)
    cannot be fast-forwarded: a resumed run then restarts the epoch, with a warning.

    Args:
        dataset: Map-style dataset.
        batch_size: Items per batch.
        sampler: A ``DistributedSampler`` (this rank's shard), or what Lightning's re-instantiation
            passes (see above); ``None``: the dataset in order.
        **kwargs: Other DataLoader arguments (``shuffle=True`` is refused: the order is the sampler's).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None, **kwargs: Any
    ) -> None:
        if kwargs.pop("shuffle", False):
            raise ValueError("ResumableDataLoader walks the dataset in order; shuffle=True is not supported")
        if sampler is None:
            sampler = OffsetSampler(len(dataset))  # type: ignore[arg-type]
        elif isinstance(sampler, DistributedSampler) and not isinstance(sampler, ResumableDistributedSampler):
            sampler = ResumableDistributedSampler.like(sampler)
        resumable = isinstance(sampler, OffsetSampler | ResumableDistributedSampler)
        self._offset_sampler = sampler if resumable else None
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
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
                f"this train loader's sampler ({type(self.sampler).__name__}) cannot skip what the checkpointed "
                "run had read; the resumed run restarts the epoch",
                stacklevel=2,
            )
            return
        self._offset_sampler.offset = int(state["batches_consumed"]) * self.batch_size
