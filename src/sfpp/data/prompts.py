"""Prompt lists for the data-free stages (DMD, GRPO): a text file in, batches ``{"prompt": [...]}`` out.

The file holds one prompt per line; surrounding whitespace is stripped and blank lines and lines
starting with ``#`` are skipped. The datamodule shards the prompts across data-parallel ranks
itself with a seeded :class:`~torch.utils.data.distributed.DistributedSampler` (so Lightning keeps
it rather than replacing it): every epoch is a permutation drawn from ``(seed, epoch)``, each rank
takes a disjoint slice of it, and all ranks get the same number of batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from sfpp.data.resumable import ResumableDataLoader

__all__ = ["PromptDataModule", "PromptDataset", "collate_prompts", "make_prompt_sampler", "read_prompts"]


def read_prompts(path: str | Path, setting: str = "data.path") -> list[str]:
    """Read the prompts of a text file (one per line; blank and ``#`` lines skipped).

    Args:
        path: The file.
        setting: The config setting the path came from, named in errors.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If the file holds no prompt.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"prompt file {setting}='{file}' does not exist; point {setting} at a text file with one prompt per line."
        )
    prompts = []
    for line in file.read_text(encoding="utf-8").splitlines():
        prompt = line.strip()
        if prompt and not prompt.startswith("#"):
            prompts.append(prompt)
    if not prompts:
        raise ValueError(
            f"prompt file {setting}='{file}' holds no prompt (only blank lines or '#' comments); "
            "write one prompt per line."
        )
    return prompts


def collate_prompts(prompts: list[str]) -> dict[str, list[str]]:
    """Batch prompts as ``{"prompt": [...]}``."""
    return {"prompt": list(prompts)}


class PromptDataset(Dataset):
    """A list of prompts, read from a text file or given directly; item ``i`` is the ``i``-th prompt.

    Args:
        path: Text file with one prompt per line (see :func:`read_prompts`).
        prompts: The prompts themselves, instead of ``path``.

    Raises:
        ValueError: Unless exactly one of ``path`` and ``prompts`` is given, or if there are no prompts.
        FileNotFoundError: If ``path`` is not a file.
    """

    def __init__(self, path: str | Path | None = None, prompts: Sequence[str] | None = None) -> None:
        if (path is None) == (prompts is None):
            raise ValueError("PromptDataset needs exactly one of `path` and `prompts`.")
        if path is not None:
            self.prompts = read_prompts(path)
        else:
            assert prompts is not None
            self.prompts = [str(p) for p in prompts]
            if not self.prompts:
                raise ValueError("PromptDataset got an empty list of prompts.")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> str:
        return self.prompts[index]


def make_prompt_sampler(
    dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int
) -> DistributedSampler:
    """The shard of ``dataset`` that data-parallel rank ``rank`` of ``num_replicas`` reads.

    The epoch's order is a permutation seeded by ``seed + epoch`` (``set_epoch``, which Lightning
    calls every epoch) or the file order; its first ``len // num_replicas * num_replicas`` items are
    dealt round-robin to the ranks, so shards are disjoint and equally long (the few left-over items
    differ from epoch to epoch when shuffling).

    Raises:
        ValueError: If ``rank`` is out of range or the dataset has fewer items than ranks.
    """
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is out of range for {num_replicas} data-parallel replicas.")
    if len(dataset) < num_replicas:
        raise ValueError(
            f"{len(dataset)} prompts cannot be sharded over {num_replicas} data-parallel ranks; "
            "add prompts or use fewer devices."
        )
    return DistributedSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
    )


class PromptDataModule(L.LightningDataModule):
    """Batches of prompts ``{"prompt": list[str]}`` for the data-free stages, sharded across ranks.

    Args:
        path: Text file of training prompts, one per line.
        batch_size: Prompts per batch on each rank.
        shuffle: Shuffle the training prompts every epoch (seeded by ``seed`` and the epoch).
        seed: Seed of the shuffling and of the validation split.
        num_workers: DataLoader worker processes.
        val_path: Text file of validation prompts.
        val_size: Number of validation prompts: the first ``val_size`` of ``val_path``, or, without
            ``val_path``, a seeded random selection held out of ``path`` (and removed from training).
            ``None``: all of ``val_path``, or no validation.
        drop_last: Drop each epoch's last incomplete training batch, so every batch holds
            ``batch_size`` prompts.

    Raises:
        FileNotFoundError: If ``path`` or ``val_path`` is not a file.
        ValueError: For non-positive sizes, a negative ``num_workers``, or (in :meth:`setup`) a
            ``val_size`` that leaves no training prompts or exceeds the validation file.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        val_path: str | Path | None = None,
        val_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}.")
        if val_size is not None and val_size < 1:
            raise ValueError(f"data.val_size must be positive or null, got {val_size}.")
        for setting, file in (("data.path", path), ("data.val_path", val_path)):
            if file is not None and not Path(file).expanduser().is_file():
                raise FileNotFoundError(
                    f"prompt file {setting}='{file}' does not exist; point {setting} at a text file with one "
                    "prompt per line."
                )
        self.save_hyperparameters()
        self.path = path
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.val_path = val_path
        self.val_size = val_size
        self.drop_last = drop_last
        self.train_dataset: PromptDataset | None = None
        self.val_dataset: PromptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the prompt files and split off the validation prompts (once)."""
        if self.train_dataset is not None:
            return
        prompts = read_prompts(self.path, "data.path")
        if self.val_path is not None:
            val_prompts = read_prompts(self.val_path, "data.val_path")
            if self.val_size is not None:
                if self.val_size > len(val_prompts):
                    raise ValueError(
                        f"data.val_size={self.val_size} exceeds the {len(val_prompts)} prompts of "
                        f"data.val_path='{self.val_path}'."
                    )
                val_prompts = val_prompts[: self.val_size]
            self.val_dataset = PromptDataset(prompts=val_prompts)
        elif self.val_size is not None:
            if self.val_size >= len(prompts):
                raise ValueError(
                    f"data.val_size={self.val_size} would hold out all {len(prompts)} prompts of "
                    f"data.path='{self.path}'; lower it or give a separate data.val_path."
                )
            generator = torch.Generator().manual_seed(self.seed)
            held_out = set(torch.randperm(len(prompts), generator=generator)[: self.val_size].tolist())
            self.val_dataset = PromptDataset(prompts=[p for i, p in enumerate(prompts) if i in held_out])
            prompts = [p for i, p in enumerate(prompts) if i not in held_out]
        self.train_dataset = PromptDataset(prompts=prompts)

    def data_parallel_shard(self) -> tuple[int, int]:
        """This process's ``(num_replicas, rank)`` among the data-parallel ranks.

        Taken from the Trainer's strategy when attached (so model-parallel ranks share a shard),
        else from ``torch.distributed`` when initialised, else ``(1, 0)``.
        """
        if self.trainer is not None:
            kwargs = self.trainer.distributed_sampler_kwargs or {}
            return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def train_dataloader(self) -> DataLoader:
        """This rank's shard of the training prompts, reshuffled every epoch.

        Raises:
            ValueError: If the shard holds fewer than ``batch_size`` prompts while ``drop_last``.
        """
        dataset = self._require(self.train_dataset)
        num_replicas, rank = self.data_parallel_shard()
        sampler = make_prompt_sampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=self.shuffle, seed=self.seed
        )
        if self.drop_last and len(sampler) < self.batch_size:
            raise ValueError(
                f"each of the {num_replicas} rank(s) gets {len(sampler)} of the {len(dataset)} training prompts, "
                f"fewer than data.batch_size={self.batch_size}: no full batch. Lower data.batch_size, add "
                "prompts, or set data.drop_last=false."
            )
        return self._loader(dataset, sampler, drop_last=self.drop_last, resumable=True)

    def val_dataloader(self) -> DataLoader | list[Any]:
        """This rank's shard of the validation prompts in file order, or ``[]`` without validation prompts."""
        if self.val_dataset is None:
            self._require(self.train_dataset)
            return []
        num_replicas, rank = self.data_parallel_shard()
        left_over = len(self.val_dataset) % num_replicas
        if left_over:
            warnings.warn(
                f"{left_over} of the {len(self.val_dataset)} validation prompts are not used: they do not "
                f"divide evenly over {num_replicas} ranks. Make data.val_size a multiple of the world size.",
                stacklevel=2,
            )
        sampler = make_prompt_sampler(
            self.val_dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=self.seed
        )
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def _loader(
        self, dataset: PromptDataset, sampler: DistributedSampler, drop_last: bool, resumable: bool = False
    ) -> DataLoader:
        """A loader of this rank's shard; ``resumable`` (training): mid-epoch resumes on every rank."""
        return (ResumableDataLoader if resumable else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_prompts,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )

    @staticmethod
    def _require(dataset: PromptDataset | None) -> PromptDataset:
        if dataset is None:
            raise RuntimeError("PromptDataModule.setup() must run before its dataloaders are requested.")
        return dataset
