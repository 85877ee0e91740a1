"""FinalStepCheckpoint keeps the state of the last step, whatever max_steps is."""

from pathlib import Path

import lightning as L
import pytest
import torch

from sfpp.callbacks import FinalStepCheckpoint


class _Regression(L.LightningModule):
    """A one-weight model fitted by SGD, with automatic or manual optimisation."""

    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.automatic_optimization = not manual
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        loss = (self.weight - 1.0).square().sum()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return None

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    tmp_path: Path, manual: bool, max_steps: int, callback_cls=FinalStepCheckpoint
) -> tuple[L.LightningModule, Path]:
    directory = tmp_path / "ckpt"
    callback = callback_cls(
        dirpath=directory, filename="step_{step:08d}", auto_insert_metric_name=False, monitor=None,
        save_top_k=1, save_last=True, every_n_train_steps=3, save_on_train_epoch_end=False,
    )  # fmt: skip
    module = _Regression(manual)
    trainer = L.Trainer(
        max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(module)
    return module, directory


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_last_checkpoint_holds_the_final_step(tmp_path, manual):
    module, directory = _fit(tmp_path, manual, max_steps=7)
    last = torch.load(directory / "last.ckpt", weights_only=False)
    assert last["global_step"] == 7
    assert torch.equal(last["state_dict"]["weight"], module.weight.detach())
    assert sorted(p.name for p in directory.glob("step_*.ckpt")) == ["step_00000007.ckpt"]


def test_plain_model_checkpoint_would_keep_an_older_step(tmp_path):
    """The Lightning behaviour this callback exists for (if it changes, the callback can go)."""
    _, directory = _fit(tmp_path, False, max_steps=7, callback_cls=L.pytorch.callbacks.ModelCheckpoint)
    assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 6


def test_a_run_ending_on_a_multiple_saves_once(tmp_path):
    _, directory = _fit(tmp_path, False, max_steps=6)
    assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 6
    assert sorted(p.name for p in directory.glob("step_*.ckpt")) == ["step_00000006.ckpt"]
