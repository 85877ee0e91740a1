"""Prompt files, the PromptDataModule, and its seeded, disjoint sharding across ranks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from sfpp.data import PromptDataModule, PromptDataset, make_prompt_sampler, read_prompts

PROMPTS = [f"prompt number {i}" for i in range(23)]


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    return write_prompts(tmp_path / "prompts.txt", PROMPTS)


def epoch_order(datamodule: PromptDataModule, epoch: int) -> list[str]:
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [p for batch in loader for p in batch["prompt"]]


def test_read_prompts_strips_and_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("# a header\n  a red square  \n\n\t\n#commented out\nblue circle # not a comment\n")
    assert read_prompts(path) == ["a red square", "blue circle # not a comment"]
    dataset = PromptDataset(path)
    assert len(dataset) == 2 and dataset[1] == "blue circle # not a comment"


def test_missing_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match=f"data.path='{missing}'"):
        PromptDataset(missing)
    with pytest.raises(FileNotFoundError, match=f"data.path='{missing}'"):
        PromptDataModule(missing, batch_size=2)
    with pytest.raises(FileNotFoundError, match=f"data.val_path='{missing}'"):
        PromptDataModule(write_prompts(tmp_path / "ok.txt", ["a"]), batch_size=1, val_path=missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n   \n")
    with pytest.raises(ValueError, match=f"'{empty}' holds no prompt"):
        PromptDataset(empty)
    datamodule = PromptDataModule(empty, batch_size=1)
    with pytest.raises(ValueError, match="holds no prompt"):
        datamodule.setup("fit")


def test_batches_are_prompt_lists(prompt_file: Path) -> None:
    datamodule = PromptDataModule(prompt_file, batch_size=4, shuffle=False)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 5  # 23 prompts, the last 3 dropped
    assert batches[0] == {"prompt": PROMPTS[:4]}
    assert datamodule.val_dataloader() == []


def test_shuffling_is_seeded_and_changes_every_epoch(prompt_file: Path) -> None:
    datamodule = PromptDataModule(prompt_file, batch_size=5, seed=7, drop_last=False)
    datamodule.setup("fit")
    epoch0, epoch1 = epoch_order(datamodule, 0), epoch_order(datamodule, 1)
    assert sorted(epoch0) == sorted(epoch1) == sorted(PROMPTS)
    assert epoch0 != epoch1 and epoch0 != PROMPTS
    again = PromptDataModule(prompt_file, batch_size=5, seed=7, drop_last=False)
    again.setup("fit")
    assert epoch_order(again, 1) == epoch1 and epoch_order(again, 0) == epoch0
    other_seed = PromptDataModule(prompt_file, batch_size=5, seed=8, drop_last=False)
    other_seed.setup("fit")
    assert epoch_order(other_seed, 0) != epoch0


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_and_equally_long(num_replicas: int, shuffle: bool) -> None:
    dataset = PromptDataset(prompts=PROMPTS)
    for epoch in (0, 1):
        shards = []
        for rank in range(num_replicas):
            sampler = make_prompt_sampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=3
            )
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        seen = [i for shard in shards for i in shard]
        assert len(seen) == len(set(seen)) == len(PROMPTS) // num_replicas * num_replicas
        assert {len(shard) for shard in shards} == {len(PROMPTS) // num_replicas}


def test_sampler_errors() -> None:
    dataset = PromptDataset(prompts=["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        make_prompt_sampler(dataset, num_replicas=2, rank=2, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="cannot be sharded over 3"):
        make_prompt_sampler(dataset, num_replicas=3, rank=0, shuffle=True, seed=0)


def test_dataloaders_shard_by_torch_distributed(prompt_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = []
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        datamodule = PromptDataModule(prompt_file, batch_size=3, seed=1)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)
        assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, rank)
        shards.append([p for batch in loader for p in batch["prompt"]])
    assert len(shards[0]) == len(shards[1]) == 9  # 11 prompts per rank, 3 full batches
    assert not set(shards[0]) & set(shards[1])


def test_validation_split_held_out_of_the_training_file(prompt_file: Path) -> None:
    datamodule = PromptDataModule(prompt_file, batch_size=2, val_size=5, seed=0)
    datamodule.setup("fit")
    assert datamodule.train_dataset is not None and datamodule.val_dataset is not None
    train, val = datamodule.train_dataset.prompts, datamodule.val_dataset.prompts
    assert len(val) == 5 and len(train) == 18 and not set(train) & set(val)
    assert sorted(train + val) == sorted(PROMPTS)
    again = PromptDataModule(prompt_file, batch_size=2, val_size=5, seed=0)
    again.setup("fit")
    assert again.val_dataset is not None and again.val_dataset.prompts == val
    val_batches = list(datamodule.val_dataloader())
    assert [p for b in val_batches for p in b["prompt"]] == val  # in order, last batch kept
    with pytest.raises(ValueError, match="data.val_size=23 would hold out all 23"):
        PromptDataModule(prompt_file, batch_size=2, val_size=23).setup("fit")


def test_validation_file(prompt_file: Path, tmp_path: Path) -> None:
    val_file = write_prompts(tmp_path / "val.txt", ["v0", "# skip", "v1", "v2"])
    datamodule = PromptDataModule(prompt_file, batch_size=2, val_path=val_file, val_size=2)
    datamodule.setup("validate")
    assert datamodule.val_dataset is not None and datamodule.val_dataset.prompts == ["v0", "v1"]
    assert datamodule.train_dataset is not None and len(datamodule.train_dataset) == 23
    with pytest.raises(ValueError, match="data.val_size=4 exceeds the 3 prompts"):
        PromptDataModule(prompt_file, batch_size=2, val_path=val_file, val_size=4).setup("fit")


def test_too_few_prompts_for_a_batch(tmp_path: Path) -> None:
    datamodule = PromptDataModule(write_prompts(tmp_path / "p.txt", ["a", "b"]), batch_size=3)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match="data.batch_size=3"):
        datamodule.train_dataloader()
    with pytest.raises(ValueError, match="data.batch_size"):
        PromptDataModule(tmp_path / "p.txt", batch_size=0)


class _RecordPrompts(L.LightningModule):
    """Records the prompts of every training and validation batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_prompts: list[list[str]] = []
        self.val_prompts: list[str] = []

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self.train_prompts.append([])
        self.train_prompts[-1].extend(batch["prompt"])
        return (self.weight**2).sum()

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        self.val_prompts.extend(batch["prompt"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("val_size", [None, 4])
def test_fits_with_a_lightning_trainer(prompt_file: Path, tmp_path: Path, val_size: int | None) -> None:
    datamodule = PromptDataModule(prompt_file, batch_size=4, seed=5, val_size=val_size)
    module = _RecordPrompts()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule)
    epochs = module.train_prompts
    assert len(epochs) == 2 and epochs[0] != epochs[1]
    # Lightning kept our sampler and called set_epoch: epoch e is the permutation seeded by seed + e.
    for epoch, prompts in enumerate(epochs):
        assert prompts == epoch_order(datamodule, epoch)
    if val_size is None:
        assert module.val_prompts == []
    else:
        assert datamodule.val_dataset is not None
        assert module.val_prompts == datamodule.val_dataset.prompts * 2
