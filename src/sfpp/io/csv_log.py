"""A CSV metrics log that survives a resumed run: :class:`ResumableCSVLogger`.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new run opens the same folder
("Previous log files ... will be deleted"), so a job requeued by SLURM and resumed from its last
checkpoint keeps only the steps it trained after the requeue. :class:`ResumableCSVLogger` keeps the
file: the first step the resumed run logs says where it resumed, the rows at or after that step
(logged by the interrupted job after its last checkpoint, and trained again now) are dropped, and
the new rows are appended, so the file reads as the log of one uninterrupted run. A fresh run in a
folder holding an older run's log (its first step is 0, below every old row) starts a new file.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["ResumableCSVLogger", "ResumableExperimentWriter"]


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer without the deletion: an existing log is continued (see the module docstring)."""

    def __init__(self, log_dir: str) -> None:
        metrics_file = os.path.join(log_dir, self.NAME_METRICS_FILE)
        kept = None
        if os.path.isfile(metrics_file):
            with open(metrics_file, newline="") as file:
                kept = list(csv.DictReader(file))
        super().__init__(log_dir)
        self._earlier_rows = kept

    def _check_log_dir_exists(self) -> None:
        """Keep an existing log (Lightning's writer warns and deletes it here); :meth:`log_metrics` trims it."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        """Record metrics; the first call of a resumed run trims the earlier log at its step."""
        if self._earlier_rows is not None:
            first = step if step is not None else 0
            rows = [row for row in self._earlier_rows if _step(row) < first]
            self._earlier_rows = None
            if rows:
                self.metrics_keys = sorted(set().union(*rows))
                with open(self.metrics_file_path, "w", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(rows)
            elif os.path.isfile(
                self.metrics_file_path
            ):  # a fresh run: nothing of the old log comes before it
                os.remove(self.metrics_file_path)
        super().log_metrics(metrics_dict, step)


def _step(row: dict[str, Any]) -> float:
    """A logged row's step (rows without one sort first)."""
    try:
        return float(row.get("step") or -1)
    except ValueError:
        return -1.0


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` continues across a resumed run (same arguments)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        """The writer, created on first use in ``log_dir``."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment
