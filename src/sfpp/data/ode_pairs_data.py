"""Reading ODE pairs for the ODE-init stage: the index, a lazy dataset and its LightningDataModule.

:class:`OdePairsDataset` serves items ``{"noisy": (K, C, F, H, W), "clean": (C, F, H, W),
"prompt": str}`` lazily from the safetensors shards written by
:class:`~sfpp.data.ode_pairs.OdePairWriter`; :class:`OdePairsDataModule` batches them for Lightning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Subset

from sfpp.data.ode_pairs import FORMAT, GENERATE_COMMAND, INDEX_FILE
from sfpp.data.resumable import ResumableDataLoader, ShuffledPasses

__all__ = ["OdePairsDataModule", "OdePairsDataset", "read_index"]


def read_index(path: str | Path, setting: str = "data.path") -> dict[str, Any]:
    """Read ``index.json`` of a directory of ODE pairs.

    Args:
        path: The directory.
        setting: The config setting the path came from, named in errors.

    Raises:
        FileNotFoundError: If the directory or its index is missing (naming the command that
            writes them).
    """
    directory = Path(path).expanduser()
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        what = "does not exist" if not directory.exists() else f"has no {INDEX_FILE}"
        raise FileNotFoundError(
            f"no ODE pairs at {setting}='{directory}' (the directory {what}). Generate them with "
            f"`{GENERATE_COMMAND} output_dir={directory}` (see conf/ode_pairs.yaml) or point {setting} "
            "at an existing directory of pairs."
        )
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not an index of ODE pairs (format {FORMAT!r})")
    return index


class OdePairsDataset(Dataset):
    """The ODE pairs of a directory written by :class:`OdePairGenerator`, read lazily.

    Items are ``{"noisy": (K, C, F, H, W), "clean": (C, F, H, W), "prompt": str}`` in float32.
    Shards are opened on first use in each process (DataLoader workers open their own).

    Args:
        path: Directory with ``index.json`` and the shards.

    Raises:
        FileNotFoundError: If the directory, its index or a listed shard is missing.
        ValueError: If no shard is complete yet.
    """

    def __init__(self, path: str | Path) -> None:
        self.directory = Path(path).expanduser()
        self.index = read_index(self.directory)
        self.settings: dict[str, Any] = self.index["settings"]
        self.files: list[Path] = []
        self.items: list[tuple[int, int]] = []  # (file number, row)
        self.prompts: list[str] = []
        for entry in self.index["shards"]:
            file = self.directory / entry["file"]
            if not file.is_file():
                raise FileNotFoundError(
                    f"{self.directory / INDEX_FILE} lists {entry['file']}, which is missing; rerun "
                    f"`{GENERATE_COMMAND} output_dir={self.directory}` to regenerate it"
                )
            with safe_open(str(file), framework="pt") as shard:
                prompts = json.loads(shard.metadata()["prompts"])
            self.items.extend((len(self.files), row) for row in range(len(prompts)))
            self.prompts.extend(prompts)
            self.files.append(file)
        if not self.items:
            raise ValueError(
                f"{self.directory} holds no complete shard yet; run `{GENERATE_COMMAND} output_dir={self.directory}`"
            )
        requested = self.index.get("requested_trajectories", 0)
        if len(self.items) < requested:
            warnings.warn(
                f"{self.directory} holds {len(self.items)} of the {requested} requested trajectories (the "
                f"generation stopped early); rerun `{GENERATE_COMMAND}` with the same settings to complete it",
                stacklevel=2,
            )
        self._handles: dict[int, Any] = {}

    @property
    def student_sigmas(self) -> list[float]:
        """Noise levels of the ``K`` stored states."""
        return list(self.settings["student_sigmas"])

    def __len__(self) -> int:
        return len(self.items)

    def _shard(self, number: int) -> Any:
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.files[number]), framework="pt")
        return self._handles[number]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Read item ``index``."""
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} ODE pairs")
        number, row = self.items[index]
        shard = self._shard(number)
        noisy = shard.get_slice("noisy")[row : row + 1][0].float()  # (K, C, F, H, W)
        clean = shard.get_slice("clean")[row : row + 1][0].float()  # (C, F, H, W)
        return {"noisy": noisy, "clean": clean, "prompt": self.prompts[index]}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open file handles do not cross process boundaries
        return state


class OdePairsDataModule(L.LightningDataModule):
    """Batches of ODE pairs ``{"noisy": (B, K, C, F, H, W), "clean": (B, C, F, H, W), "prompt": list[str]}``.

    Args:
        path: Directory of pairs (``python -m sfpp.ode_pairs`` writes it).
        batch_size: Pairs per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffling and of the validation split.
        val_fraction: Fraction of the pairs held out for validation (seeded selection).

    Raises:
        FileNotFoundError: If ``path`` holds no pairs (naming the command that makes them).
        ValueError: For impossible sizes.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.dataset = OdePairsDataset(path)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        num_val = round(val_fraction * len(self.dataset))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        self.val_dataset = Subset(self.dataset, sorted(order[:num_val])) if num_val else None
        self.train_dataset = Subset(self.dataset, sorted(order[num_val:]))
        if len(self.train_dataset) < batch_size:
            raise ValueError(
                f"{len(self.train_dataset)} training pairs in {path} make no full batch of "
                f"data.batch_size={batch_size}; lower data.batch_size or data.val_fraction, or generate more pairs"
            )

    @property
    def student_sigmas(self) -> list[float]:
        """Noise levels of the stored states (must equal the student's ``sampler.sigmas``)."""
        return self.dataset.student_sigmas

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) passes over the training pairs, full batches only; resumes mid-epoch."""
        return ResumableDataLoader(
            ShuffledPasses(self.train_dataset, self.batch_size, self.seed),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        """Loader over the held-out pairs in a fixed order, or ``[]`` when ``val_fraction`` is 0."""
        if self.val_dataset is None:
            return []
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
