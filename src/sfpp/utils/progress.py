"""Progress of long loops that reads in a terminal and in a log file alike.

In an interactive terminal with ``rich`` installed (the ``apps`` extra), :class:`ProgressReport`
draws a live bar. Anywhere else (output redirected to a file, a cluster job's log, no ``rich``)
it logs one line every ``every_percent`` percent, with the count, the elapsed time, the time left
and the caller's fields::

    ODE pairs: 64/128 trajectories (50%), 31.2 s elapsed, ~31 s left, shard 1
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["ProgressReport", "format_seconds"]

log = logging.getLogger("sfpp.progress")


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressReport:
    """Count work done out of ``total``, shown as a bar or as log lines.

    Args:
        description: What is counted, e.g. ``"ODE pairs"``.
        total: Units of work in all (``> 0``).
        unit: Name of a unit, e.g. ``"frames"``.
        enabled: ``False`` shows nothing.
        every_percent: Log-line spacing when no live bar is drawn.
        live: Draw a live bar (``None``: when stderr is a terminal and ``rich`` is installed).
    """

    def __init__(
        self,
        description: str,
        total: int,
        unit: str = "",
        enabled: bool = True,
        every_percent: float = 5.0,
        live: bool | None = None,
    ) -> None:
        if total <= 0:
            raise ValueError(f"total must be positive, got {total}")
        self.description = description
        self.total = int(total)
        self.unit = unit
        self.enabled = enabled
        self.every = max(1, round(self.total * every_percent / 100.0))
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self._next_log = self.every
        self._start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        if live is None:
            live = sys.stderr.isatty() and _rich_available()
        self.live = bool(live) and enabled

    def __enter__(self) -> ProgressReport:
        self._start = time.perf_counter()
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"[bold]{self.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(f"{self.unit} {{task.fields[extra]}}"),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, extra="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)
        elif (
            self.enabled and kind is None and self.completed < self.total and self.completed >= self._next_log
        ):
            self._log()

    @property
    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.perf_counter() - self._start

    def update(self, completed: int, **fields: Any) -> None:
        """Set the work done so far (and the fields shown beside it)."""
        self.completed = min(int(completed), self.total)
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, extra=self._fields_text())
        elif self.completed >= self._next_log or self.completed == self.total:
            self._log()
            self._next_log = (self.completed // self.every + 1) * self.every

    def advance(self, amount: int = 1, **fields: Any) -> None:
        """Add ``amount`` units of work done."""
        self.update(self.completed + amount, **fields)

    def line(self) -> str:
        """The current state as one line (what is logged)."""
        elapsed = self.elapsed
        percent = 100.0 * self.completed / self.total
        text = f"{self.description}: {self.completed}/{self.total} {self.unit}".rstrip()
        text += f" ({percent:.0f}%), {format_seconds(elapsed)} elapsed"
        if 0 < self.completed < self.total:
            text += f", ~{format_seconds(elapsed * (self.total - self.completed) / self.completed)} left"
        extra = self._fields_text()
        return f"{text}, {extra}" if extra else text

    def _fields_text(self) -> str:
        parts = []
        for key, value in self.fields.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"{key} {shown}")
        return ", ".join(parts)

    def _log(self) -> None:
        message = self.line()
        if log.hasHandlers() and log.getEffectiveLevel() <= logging.INFO:
            log.info(message)
        else:
            print(message, file=sys.stderr, flush=True)


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True
