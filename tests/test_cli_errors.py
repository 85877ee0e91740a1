"""User errors of the command lines: one or two lines naming the setting, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.errors import InstantiationException

from sfpp.utils.cli import USER_ERROR_EXIT, user_errors


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        check=False,
    )


def test_a_missing_checkpoint_is_one_line(tmp_path) -> None:
    result = _run(
        "sfpp.generate",
        f"checkpoint={tmp_path}/missing.ckpt",
        "prompt=a red circle",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == USER_ERROR_EXIT
    assert "Traceback" not in result.stderr
    assert f"error: checkpoint={tmp_path}/missing.ckpt does not exist" in result.stderr


def test_hydra_full_error_keeps_the_traceback(tmp_path) -> None:
    result = _run(
        "sfpp.generate",
        f"checkpoint={tmp_path}/missing.ckpt",
        "prompt=a red circle",
        f"hydra.run.dir={tmp_path}",
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_debug_flag_keeps_the_traceback(tmp_path) -> None:
    result = _run(
        "sfpp.generate",
        f"checkpoint={tmp_path}/missing.ckpt",
        "prompt=a red circle",
        f"hydra.run.dir={tmp_path}",
        "--debug",
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "does not exist" in result.stderr


def test_take_debug_flag_removes_the_flag(monkeypatch) -> None:
    from sfpp.utils.cli import take_debug_flag

    monkeypatch.setenv("HYDRA_FULL_ERROR", "")  # recorded, so the test's own setting is undone after it
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    argv = ["train.py", "experiment=tiny"]
    assert not take_debug_flag(argv) and "HYDRA_FULL_ERROR" not in os.environ
    argv.append("--debug")
    assert take_debug_flag(argv) and argv == ["train.py", "experiment=tiny"]
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_no_stage_selected_names_the_setting(tmp_path) -> None:
    result = _run("sfpp.train", f"hydra.run.dir={tmp_path}")
    assert result.returncode == USER_ERROR_EXIT and "Traceback" not in result.stderr
    assert "pass `stage=<name>`" in result.stderr


def test_the_wrapper_unwraps_instantiation_errors_and_keeps_bugs(monkeypatch, capsys) -> None:
    def bad_setting(cfg):
        try:
            raise ValueError("stage.cache_window_frames=1 is smaller than a chunk")
        except ValueError as error:
            raise InstantiationException("Error in call to target 'x'") from error

    with pytest.raises(SystemExit) as stopped:
        user_errors(bad_setting)(None)
    assert stopped.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err.startswith("error: stage.cache_window_frames=1 is smaller than a chunk")

    def bug(cfg):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        user_errors(bug)(None)
    assert user_errors(lambda cfg: 3)(None) == 3
    # in a submitit job the user error itself is raised: submitit records it as the job's result
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    with pytest.raises(InstantiationException):
        user_errors(bad_setting)(None)


def test_known_harmless_warnings_are_hidden_and_others_kept() -> None:
    import warnings

    from sfpp.utils.cli import HARMLESS_WARNINGS, quiet_known_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn(
            "Found 106 module(s) in eval mode at the start of training. This may lead to ...", stacklevel=1
        )
        warnings.warn("Torchinductor does not support code generation for complex operators.", stacklevel=1)
        warnings.warn(
            "Precision bf16-mixed is not supported by the model summary.  Estimated model size in MB will "
            "not be accurate. Using 32 bits instead.",
            stacklevel=1,
        )
        warnings.warn("a warning a user should act on", stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning a user should act on"]
    assert all(why for _, why in HARMLESS_WARNINGS)


def test_lightnings_advertisement_is_dropped_and_its_other_info_kept(caplog) -> None:
    import logging

    from lightning.pytorch.utilities import rank_zero_info

    from sfpp.utils.cli import quiet_known_warnings

    quiet_known_warnings()
    quiet_known_warnings()  # once is enough; twice adds no second filter
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert len(rank_zero.filters) == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
