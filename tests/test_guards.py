"""Long-run guards: a diverging run stops before it overwrites its last good checkpoint; checkpoints
are written atomically, so a writer killed mid-write leaves the previous file intact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sfpp.callbacks import DivergenceError, DivergenceGuard
from sfpp.utils.atomic import AtomicCheckpointIO, atomic_save


class _Poisoned(L.LightningModule):
    """A tiny regression whose loss turns NaN at step ``nan_at`` (or whose video std collapses)."""

    def __init__(self, nan_at: int | None = None, flat_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.nan_at, self.flat_at = nan_at, flat_at

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        self.log("train/video_std", 0.0 if self.global_step == self.flat_at else 0.5)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, module: L.LightningModule, **trainer_kw) -> ModelCheckpoint:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=12,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[checkpoint, DivergenceGuard()],
        **trainer_kw,
    )
    trainer.fit(module, data)
    return checkpoint


@pytest.mark.parametrize(
    ("kw", "says"),
    [({"nan_at": 5}, "train/loss = nan is not finite"), ({"flat_at": 5}, "train/video_std = 0 is outside")],
)
def test_a_diverged_step_stops_the_run_and_is_never_saved(tmp_path, kw, says):
    with pytest.raises(DivergenceError, match="diverged at step 6") as error:
        _fit(tmp_path, _Poisoned(**kw), plugins=[AtomicCheckpointIO()])
    assert says in str(error.value) and "last.ckpt" in str(error.value)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 5  # the state before the diverged step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_a_healthy_run_is_not_stopped(tmp_path):
    _fit(tmp_path, _Poisoned())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 12


def test_bad_bounds():
    with pytest.raises(ValueError, match="min_video_std"):
        DivergenceGuard(min_video_std=2.0, max_video_std=1.0)


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    writer = textwrap.dedent(
        f"""
        import sys, time
        import torch
        from sfpp.utils.atomic import atomic_save

        class Slow:  # pickled halfway through the file, then the writer hangs until it is killed
            def __reduce__(self):
                print("writing", flush=True)
                time.sleep(60)
                return (int, (0,))

        atomic_save({{"step": 1, "weights": torch.ones(1000)}}, {str(path)!r})
        print("saved", flush=True)
        atomic_save({{"step": 2, "weights": torch.zeros(1000), "slow": Slow()}}, {str(path)!r})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "saved"
    assert child.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    child.kill()
    child.wait(timeout=30)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["weights"], torch.ones(1000))
    # the half-written temporary file is what the kill left behind, next to the intact checkpoint
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1


def test_atomic_save_cleans_up_after_an_error(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    atomic_save({"step": 1}, tmp_path / "a.ckpt")
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"bad": Unpicklable()}, tmp_path / "a.ckpt")
    assert torch.load(tmp_path / "a.ckpt") == {"step": 1}
    assert not list(tmp_path.glob("*.tmp"))
