"""ProgressLog: training progress as log lines for non-interactive logs."""

import logging

import lightning as L
import pytest
import torch

from sfpp.callbacks import ProgressLog


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_line_every_few_percent_with_losses_and_time_left(tmp_path, caplog):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ProgressLog(every_percent=25, only_when_not_a_terminal=False)],
    )
    with caplog.at_level(logging.INFO, logger="sfpp.progress"):
        trainer.fit(_Tiny(), data)
    lines = [r.getMessage() for r in caplog.records if r.name == "sfpp.progress"]
    assert lines[0] == "training for 20 steps (from step 0)"
    assert lines[1].startswith("step 1/20: first step done after ") and "compilation" in lines[1]
    steps = [line.split(":")[0] for line in lines[2:]]
    assert steps == ["step 5/20 (25%)", "step 10/20 (50%)", "step 15/20 (75%)", "step 20/20 (100%)"]
    assert all("train/loss" in line and "elapsed" in line and "left" in line for line in lines[2:])


def test_bad_interval():
    with pytest.raises(ValueError, match="every_percent"):
        ProgressLog(every_percent=0)
