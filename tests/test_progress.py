"""ProgressReport: log lines every few percent off a terminal, nothing when disabled."""

from __future__ import annotations

import logging

import pytest

from sfpp.utils.progress import ProgressReport, format_seconds


def test_log_lines_every_few_percent_with_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sfpp.progress")
    with ProgressReport("ODE pairs", 100, "trajectories", every_percent=25, live=False) as report:
        for _ in range(100):
            report.advance(1, shard=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "sfpp.progress"]
    assert len(lines) == 4  # 25, 50, 75 and 100 of 100
    assert lines[0].startswith("ODE pairs: 25/100 trajectories (25%)")
    assert "left" in lines[0] and lines[0].endswith("shard 3")
    assert lines[-1].startswith("ODE pairs: 100/100 trajectories (100%)") and "left" not in lines[-1]


def test_update_jumps_log_once_and_clamp(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sfpp.progress")
    with ProgressReport("frames", 40, every_percent=10, live=False) as report:
        report.update(30, frames_per_s=12.345678)
        report.update(80)
    lines = [r.getMessage() for r in caplog.records if r.name == "sfpp.progress"]
    assert len(lines) == 2
    assert "frames_per_s 12.35" in lines[0]
    assert report.completed == 40


def test_disabled_reports_nothing(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sfpp.progress")
    with ProgressReport("x", 10, enabled=False) as report:
        report.advance(10)
    assert not [r for r in caplog.records if r.name == "sfpp.progress"]
    assert capsys.readouterr().err == ""


def test_without_logging_handlers_lines_go_to_stderr(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated = logging.Logger("isolated")  # no handlers, not attached to the root logger
    monkeypatch.setattr("sfpp.utils.progress.log", isolated)
    with ProgressReport("steps", 2, every_percent=50, live=False) as report:
        report.advance(2)
    assert "steps: 2/2" in capsys.readouterr().err


def test_bad_total_and_seconds_format() -> None:
    with pytest.raises(ValueError, match="total must be positive"):
        ProgressReport("x", 0)
    assert format_seconds(42) == "42 s"
    assert format_seconds(210) == "3.5 min"
    assert format_seconds(4320 * 2) == "2.4 h"
