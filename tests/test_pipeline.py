"""The stage runner behind make demo and make study."""

import pytest

from sfpp.apps.pipeline import StageFailedError, StageRun, run_stages

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
