import subprocess
import sys

import pytest


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sfpp.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PROJECT_ROOT": str(cwd), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_basic_multirun_sweeps_a_grid(tmp_path):
    result = _run(
        [
            "-m",
            "experiment=tiny",
            "trainer.max_steps=2",
            "stage.optimizer.lr=1e-3,3e-3",
            "data.num_frames=2,4",
            "callbacks.video_samples=null",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [p for p in (tmp_path / "multirun").rglob(".hydra") if p.is_dir()]
    assert len(jobs) == 4


@pytest.mark.slow
def test_optuna_sweep_returns_the_metric(tmp_path):
    result = _run(
        [
            "-m",
            "experiment=tiny",
            "hparams_search=toy_teacher_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            "callbacks.video_samples=null",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (best,) = (tmp_path / "multirun").rglob("optimization_results.yaml")
    text = best.read_text()
    assert "best_value" in text and "stage.optimizer.lr" in text
