"""Cluster launch: the SLURM launcher and trainer configs compose; a multirun goes through submitit's
local launcher end to end; ckpt_path=last resumes a run where it stopped (what a requeued job does)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

ROOT = Path(__file__).resolve().parents[1]


def test_slurm_launcher_and_trainer_compose_for_8_nodes_of_8_gpus(compose_train) -> None:
    cfg = compose_train(
        [
            "hydra/launcher=slurm",
            "trainer=fsdp_slurm",
            "experiment=extend_100s",
            "hydra.launcher.partition=gpu",
        ],
        shrink=False,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (8, 8, 8)
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    assert cfg.trainer.num_nodes == 8 and cfg.trainer.strategy.data_parallel_size == 64
    (environment,) = [hydra.utils.instantiate(p) for p in cfg.trainer.plugins]
    assert type(environment).__name__ == "SLURMEnvironment" and not environment.auto_requeue


def test_the_slurm_launcher_asks_no_gpu_for_a_cpu_trainer(compose_train) -> None:
    from sfpp.utils.resolvers import gpus_per_node

    cfg = compose_train(["hydra/launcher=slurm", "trainer=cpu", "experiment=tiny"], shrink=False)
    launcher = cfg.hydra.launcher
    assert (
        launcher.gpus_per_node is None and launcher.tasks_per_node == 1
    )  # submitit leaves --gpus-per-node out
    gpu = compose_train(
        ["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "experiment=tiny"], shrink=False
    )
    assert gpu.hydra.launcher.gpus_per_node == 4
    assert gpus_per_node("cuda", "2") == 2 and gpus_per_node("auto", 8) is None
    with pytest.raises(ValueError, match="needs a GPU count per node"):
        gpus_per_node("gpu", "auto")


def _train(tmp_path: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sfpp.train",
            *(["--multirun"] if multirun else []),
            "experiment=tiny",
            f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun",
            f"hydra.run.dir={tmp_path}/run",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_a_multirun_through_the_local_submitit_launcher(tmp_path) -> None:
    result = _train(tmp_path, "hydra/launcher=local", "debug=fast_dev_run", "seed=0,1", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted((tmp_path / "multirun" / ".submitit").rglob("*_result.pkl"))
    assert len(logs) == 2  # one submitit job per seed, each finished with a result


def test_ckpt_path_last_resumes_where_the_run_stopped(tmp_path) -> None:
    first = _train(
        tmp_path,
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "ckpt_path=last",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpt",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 4
    again = _train(
        tmp_path,
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=1",
        "ckpt_path=last",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpt",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in again.stdout + again.stderr
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 6
    # the metrics log continues: the first run's steps, then the resumed run's (nothing deleted)
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as file:
        steps = sorted({int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")})
    assert steps == list(range(6)), steps


def test_ckpt_path_last_refuses_a_folder_of_a_run_with_other_settings(tmp_path) -> None:
    shared = [
        "trainer.max_steps=2",
        "ckpt_path=last",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpt",
    ]
    first = _train(tmp_path, *shared)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((tmp_path / "ckpt" / "run.json").read_text())
    assert record["settings"]["seed"] == 0 and "ckpt_path=last" in record["overrides"]
    other = _train(tmp_path, *shared, "seed=5", "stage.cfg_dropout=0.2")
    assert other.returncode == 2, other.stderr[-3000:]
    message = other.stderr
    # the seed reaches the data and the stage through ${seed}: every setting it changes is named
    assert (
        "belong to a run with other settings (data.seed, seed, stage.cfg_dropout, stage.seed differ"
        in message
    )
    assert "callbacks.model_checkpoint.dirpath" in message and "Traceback" not in message
    # an explicit checkpoint file is resumed on purpose, whatever its settings
    explicit = _train(
        tmp_path,
        *shared[:-3],
        "trainer.max_steps=3",
        "seed=5",
        f"ckpt_path={tmp_path}/ckpt/last.ckpt",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"callbacks.model_checkpoint.dirpath={tmp_path}/other",
    )
    assert explicit.returncode == 0, explicit.stderr[-3000:]


def test_a_record_of_the_earlier_settings_layout_still_resumes(compose_train, tmp_path) -> None:
    """Runs recorded before the student settings moved into ``stage.student`` resume with ``ckpt_path=last``."""
    from sfpp.utils.run_record import RECORD_NAME, ResumeMismatchError, check_resume, run_settings

    folder = tmp_path / "ckpt"
    cfg = compose_train(
        ["experiment=toy_extend", "ckpt_path=last", f"callbacks.model_checkpoint.dirpath={folder}"]
    )
    settings = run_settings(cfg)
    old = json.loads(json.dumps(settings))
    old["stage"].update(old["stage"].pop("student"))  # the flat layout
    old["stage"]["window_beta"] = [2.0, 1.0]  # options since removed
    old["data"]["image_max_objects"] = None
    folder.mkdir()
    (folder / RECORD_NAME).write_text(json.dumps({"overrides": [], "settings": old}))
    check_resume(cfg)  # the same run: accepted

    old["stage"]["sink_frames"] = 2
    (folder / RECORD_NAME).write_text(json.dumps({"overrides": [], "settings": old}))
    with pytest.raises(ResumeMismatchError, match=r"\(stage\.student\.sink_frames differ"):
        check_resume(cfg)
