"""The CSV metrics log of a resumed run continues the interrupted run's (sfpp.io.csv_log)."""

from __future__ import annotations

import csv
from pathlib import Path

from sfpp.io.csv_log import ResumableCSVLogger, ResumableExperimentWriter


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _interrupted_run(log_dir: Path, last_step: int) -> None:
    writer = ResumableExperimentWriter(str(log_dir))
    for step in range(last_step + 1):
        writer.log_metrics({"loss": 1.0 / (step + 1)}, step)
    writer.save()


def test_a_resumed_run_drops_the_rows_it_trains_again_and_appends(tmp_path: Path) -> None:
    _interrupted_run(tmp_path, 9)  # killed at step 9, its last checkpoint at step 6
    resumed = ResumableExperimentWriter(str(tmp_path))
    for step in range(6, 12):
        resumed.log_metrics({"loss": 0.5, "lr": 1e-4}, step)  # a new column too
    resumed.save()
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert rows[5]["loss"] == str(1.0 / 6) and rows[5]["lr"] == "" and rows[6]["loss"] == "0.5"


def test_a_fresh_run_in_the_same_folder_starts_a_new_log(tmp_path: Path) -> None:
    _interrupted_run(tmp_path, 4)
    fresh = ResumableExperimentWriter(str(tmp_path))
    fresh.log_metrics({"loss": 2.0}, 0)
    fresh.save()
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "metrics.csv")] == [("0", "2.0")]


def test_the_logger_writes_through_the_resumable_writer(tmp_path: Path) -> None:
    logger = ResumableCSVLogger(str(tmp_path), name="csv", version="")
    assert isinstance(logger.experiment, ResumableExperimentWriter)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert _rows(tmp_path / "csv" / "metrics.csv")[0]["loss"] == "1.0"
