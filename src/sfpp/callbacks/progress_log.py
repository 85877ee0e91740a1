"""Training progress as log lines, for logs that no progress bar reaches (a file, a cluster job).

:class:`ProgressLog` logs one line every ``every_percent`` percent of ``trainer.max_steps`` through
the ``sfpp.progress`` logger, which Hydra's job logging sends to the console and to the run's
``train.log``::

    step 1/9200: first step done after 1.5 min (compilation included)
    step 460/9200 (5%): train/loss 0.0274, 2.7 min elapsed, ~21.0 min left

The losses shown are the latest values of the logged metrics whose names contain ``loss`` (or the
names given). In an interactive terminal the progress bar already shows them, so by default the
lines are only written when standard error is not a terminal. The first step gets a line of its own:
it pays for ``torch.compile`` and warm-up, and the first mark can be minutes after it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import lightning as L

from sfpp.utils.progress import format_seconds

__all__ = ["ProgressLog"]

log = logging.getLogger("sfpp.progress")


class ProgressLog(L.Callback):
    """Log step, losses and time left every few percent of the run.

    Args:
        every_percent: Percent of ``max_steps`` between two lines (``0 < every_percent <= 100``).
        metrics: Names of the logged metrics to show (default: every metric whose name contains
            ``loss``).
        only_when_not_a_terminal: Write nothing when standard error is an interactive terminal.

    Raises:
        ValueError: For ``every_percent`` outside ``(0, 100]``.
    """

    def __init__(
        self,
        every_percent: float = 5.0,
        metrics: Sequence[str] | None = None,
        only_when_not_a_terminal: bool = True,
    ) -> None:
        if not 0 < every_percent <= 100:
            raise ValueError(f"every_percent must be in (0, 100], got {every_percent}")
        self.every_percent = every_percent
        self.metrics = list(metrics) if metrics is not None else None
        self.only_when_not_a_terminal = only_when_not_a_terminal
        self._began: float | None = None
        self._first_step = 0
        self._next_percent = every_percent

    @property
    def _enabled(self) -> bool:
        return not (self.only_when_not_a_terminal and sys.stderr.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock (a resumed run counts from its resumed step)."""
        self._began = time.perf_counter()
        self._first_step = trainer.global_step
        total = trainer.max_steps
        done = 100.0 * trainer.global_step / total if total and total > 0 else 0.0
        self._next_percent = (int(done // self.every_percent) + 1) * self.every_percent
        if self._enabled and total and total > 0:
            log.info("training for %d steps (from step %d)", total, trainer.global_step)

    def _line(self, trainer: L.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        elapsed = time.perf_counter() - (self._began or time.perf_counter())
        done = step - self._first_step
        left = elapsed / done * (total - step) if done > 0 else float("nan")
        values = []
        for name, value in trainer.callback_metrics.items():
            wanted = name in self.metrics if self.metrics is not None else "loss" in name
            if wanted and not name.endswith("_epoch"):
                values.append(f"{name.removesuffix('_step')} {float(value):.4g}")
        fields = ", ".join([*values, f"{format_seconds(elapsed)} elapsed", f"~{format_seconds(left)} left"])
        return f"step {step}/{total} ({100.0 * step / total:.0f}%): {fields}"

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log a line when the run passes the next ``every_percent`` mark."""
        total = trainer.max_steps
        if not self._enabled or not total or total <= 0:
            return
        percent = 100.0 * trainer.global_step / total
        if trainer.global_step == self._first_step + 1 and percent + 1e-9 < self._next_percent:
            # The first step pays for compilation and warm-up: say that training runs before the
            # first mark, which can be minutes away.
            elapsed = time.perf_counter() - (self._began or time.perf_counter())
            log.info(
                "step %d/%d: first step done after %s (compilation included)",
                trainer.global_step,
                total,
                format_seconds(elapsed),
            )
        if percent + 1e-9 >= self._next_percent:
            log.info(self._line(trainer))
            while self._next_percent <= percent + 1e-9:
                self._next_percent += self.every_percent
