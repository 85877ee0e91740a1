"""What a benchmark measured, as JSON for the results page (``docs/results/benchmarks.md``).

Every ``bench_*.py`` script accepts ``--json PATH``; with it, the script also writes the tables it
printed, its PASS/FAIL lines and where it ran to ``PATH`` through :class:`BenchReport`.
``make bench`` writes ``artifacts/bench/<script>.json``; ``make bench-publish`` merges them into
``docs/results/benchmarks.json`` and regenerates the page
(``python -m sfpp.apps.results_pages --benchmarks artifacts/bench``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from sfpp.apps.pipeline import machine

__all__ = ["BenchReport"]


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    commit = run.stdout.strip() or "unknown"
    return commit + ("+changes" if dirty.stdout.strip() else "")


@dataclass
class BenchReport:
    """The tables, checks and setting of one benchmark run.

    Args:
        script: The script's file name (``bench_rollout.py``).
        title: What it measures, in a line (the page's section heading).
        setting: The fixed setting of the run, in a sentence or two.
        threads: Torch intra-op threads while timing (``None`` when nothing is timed).
    """

    script: str
    title: str
    setting: str
    threads: int | None
    tables: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _began: float = field(default_factory=time.perf_counter, repr=False)
    _load: float = field(default_factory=lambda: os.getloadavg()[0], repr=False)

    def table(self, caption: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Add a table: its caption, column names and rows of cells (strings or numbers)."""
        if any(len(row) != len(columns) for row in rows):
            raise ValueError(f"every row of {caption!r} needs {len(columns)} cells")
        self.tables.append({"caption": caption, "columns": list(columns), "rows": [list(r) for r in rows]})

    def check(self, passed: bool, text: str) -> None:
        """Add a target and whether this run met it (``text`` states the measured value and the bound)."""
        self.checks.append({"passed": bool(passed), "text": text})

    def note(self, text: str) -> None:
        """Add a sentence that explains the numbers (no measured value in it: those go in tables)."""
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        """The JSON layout of one benchmark run."""
        return {
            "script": self.script,
            "title": self.title,
            "setting": self.setting,
            "measured": date.today().isoformat(),
            "commit": _commit(),
            "command": " ".join(["python", f"tests/benchmarks/{self.script}", *sys.argv[1:]]),
            "machine": machine(),
            "torch": torch.__version__,
            "threads": self.threads,
            "seconds": round(time.perf_counter() - self._began, 1),
            "load_average": {"start": round(self._load, 2), "end": round(os.getloadavg()[0], 2)},
            "tables": self.tables,
            "checks": self.checks,
            "notes": self.notes,
        }

    def write(self, path: str | Path | None) -> None:
        """Write the JSON to ``path`` (nothing when ``path`` is ``None``)."""
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        print(f"wrote {path}")
