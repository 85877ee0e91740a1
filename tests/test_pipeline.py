"""The stage runner behind make demo and make study."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sfpp.apps.pipeline import StageFailedError, StageRun, checkpoint_step, run_stages

FAKE_STAGE = """
import sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
counter = Path(args["counter"])
counter.write_text(counter.read_text() + args["name"] + "\\n" if counter.exists() else args["name"] + "\\n")
if args.get("fail") == "1":
    sys.exit(3)
if "warned" in args:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("Be aware that when using `ckpt_path`, callbacks ...", stacklevel=1)
        warnings.warn("a warning a user should act on", stacklevel=1)
    Path(args["warned"]).write_text("\\n".join(str(w.message) for w in caught))
if args.get("write", "1") == "1":
    Path(args["out"]).write_text("done")
"""


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake_stage.py").write_text(FAKE_STAGE)
    counter = tmp_path / "runs.txt"

    def stage(name, ignored_warnings=(), **extra):
        out = tmp_path / f"{name}.done"
        args = {"name": name, "out": out, "counter": counter, **extra}
        return StageRun(
            name, "fake_stage", [f"{k}={v}" for k, v in args.items()], out, None, ignored_warnings
        )

    return stage, counter, tmp_path


def test_runs_missing_stages_and_reuses_finished_ones(fake):
    stage, counter, cwd = fake
    stages = [stage("teacher"), stage("student")]
    first = run_stages(stages, cwd=cwd)
    assert [t.reused for t in first] == [False, False] and all(t.seconds > 0 for t in first)
    assert counter.read_text().split() == ["teacher", "student"]
    second = run_stages(stages, cwd=cwd)
    assert [t.reused for t in second] == [True, True]
    assert counter.read_text().split() == ["teacher", "student"]  # nothing ran again
    run_stages(stages, force=["student"], cwd=cwd)
    assert counter.read_text().split() == ["teacher", "student", "student"]


def test_a_failing_stage_stops_the_pipeline(fake):
    stage, counter, cwd = fake
    with pytest.raises(StageFailedError, match="'broken' failed"):
        run_stages([stage("broken", fail=1), stage("after")], cwd=cwd)
    assert counter.read_text().split() == ["broken"]
    with pytest.raises(StageFailedError, match="did not write"):
        run_stages([stage("silent", write=0)], cwd=cwd)
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages([stage("a")], force=["b"], cwd=cwd)


def test_a_stage_hides_only_the_warnings_it_names(fake, monkeypatch):
    from sfpp.apps.study_stages import RESUMED_WITH_OTHER_CALLBACKS

    stage, _, cwd = fake
    monkeypatch.setenv("PYTHONWARNINGS", "default")
    run_stages([stage("plain", warned=cwd / "plain.txt")], cwd=cwd)
    assert (cwd / "plain.txt").read_text().count("\n") == 1  # both warnings
    hiding = stage("resumed", ignored_warnings=(RESUMED_WITH_OTHER_CALLBACKS,), warned=cwd / "resumed.txt")
    assert hiding.environment()["PYTHONWARNINGS"] == f"default,ignore:{RESUMED_WITH_OTHER_CALLBACKS}"
    run_stages([hiding], cwd=cwd)
    assert (cwd / "resumed.txt").read_text() == "a warning a user should act on"
    with pytest.raises(ValueError, match="cannot hold"):
        stage("bad", ignored_warnings=("a: b",)).environment()


def test_a_stage_is_done_when_it_finished_with_the_same_settings(fake):
    stage, counter, cwd = fake
    first = stage("teacher")
    run_stages([first], cwd=cwd)
    record = json.loads(first.record_file.read_text())
    assert record["finished"] and record["overrides"] == list(first.overrides)
    # the same file from other settings is not reused: the stage trains again, saying why
    other = StageRun("teacher", "fake_stage", [*first.overrides, "lr=2"], first.done_file)
    timing = run_stages([other], cwd=cwd)
    assert not timing[0].reused and counter.read_text().split() == ["teacher", "teacher"]
    assert run_stages([other], cwd=cwd)[0].reused
    # a file without a finished record (the run stopped) is not reused either
    _write_unfinished(other)
    assert not run_stages([other], cwd=cwd)[0].reused


def _write_unfinished(stage: StageRun) -> None:
    record = json.loads(stage.record_file.read_text())
    stage.record_file.write_text(json.dumps({**record, "finished": False}))


INTERRUPTIBLE = """
import sys
from pathlib import Path
from sfpp.apps.pipeline import StageInterruptedError, StageRun, run_stages

root = Path(sys.argv[1])
stage = StageRun(
    "tiny",
    "sfpp.train",
    [
        "experiment=tiny",
        "trainer.max_steps=240",
        "trainer.val_check_interval=240",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        f"callbacks.model_checkpoint.dirpath={root / 'checkpoints'}",
        "callbacks.video_samples=null",
        f"hydra.run.dir={root / 'run'}",
        "logger=csv",
    ],
    root / "checkpoints" / "last.ckpt",
)
try:
    timings = run_stages([stage], cwd=Path.cwd())
except StageInterruptedError as error:
    print(f"stopped: {error}")
    sys.exit(130)
print("resumed_from_step", timings[0].resumed_from_step)
"""


def test_an_interrupted_training_stage_resumes_to_its_planned_end(tmp_path):
    """Ctrl-C (SIGINT to the process group) mid-stage, then the same pipeline again."""
    script = tmp_path / "pipeline_script.py"
    script.write_text(INTERRUPTIBLE)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "the stage wrote no checkpoint"
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "stopped: interrupted during stage 'tiny'; kept" in output and "Traceback" not in output
    interrupted_at = checkpoint_step(checkpoint)
    assert interrupted_at is not None and 0 < interrupted_at < 240
    record = json.loads(checkpoint.with_name("last.ckpt.stage.json").read_text())
    assert record["finished"] is False

    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert f"resuming from step {interrupted_at} of {checkpoint}" in output
    assert f"resumed_from_step {interrupted_at}" in output
    assert checkpoint_step(checkpoint) == 240
    record = json.loads(checkpoint.with_name("last.ckpt.stage.json").read_text())
    assert record["finished"] and record["step"] == 240
