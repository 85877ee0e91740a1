"""Stop a diverging run before it overwrites its last good checkpoint.

:class:`DivergenceGuard` checks the metrics a stage logs after every training step: a loss that is
not finite, or a rollout whose video standard deviation (``train/video_std``, logged by the DMD
stage) leaves ``[min_video_std, max_video_std]`` (collapse to a flat video, or an explosion). It
then raises :class:`DivergenceError` with the step, the metric, its value and the last checkpoint
written. Lightning runs checkpoint callbacks after every other callback, so the diverged step is
never saved: ``last.ckpt`` stays the last good state, ready for ``ckpt_path=`` once the cause (a
learning rate, a guidance scale) is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L

__all__ = ["DivergenceError", "DivergenceGuard"]


class DivergenceError(RuntimeError):
    """A training run diverged; the message names the step, the metric and the last good checkpoint."""


class DivergenceGuard(L.Callback):
    """Raise :class:`DivergenceError` when a loss turns non-finite or the video std leaves its bounds.

    Args:
        loss_keys: Substrings of the logged metrics that are losses (default: every metric whose
            name contains ``loss``).
        video_std_key: The logged standard deviation of the training videos (``None``: not checked).
        min_video_std: Smallest acceptable video std (a video collapsing to flat colour).
        max_video_std: Largest acceptable video std (latents exploding).

    Raises:
        ValueError: If ``min_video_std`` is negative or not below ``max_video_std``.
    """

    def __init__(
        self,
        loss_keys: Sequence[str] = ("loss",),
        video_std_key: str | None = "train/video_std",
        min_video_std: float = 0.01,
        max_video_std: float = 10.0,
    ) -> None:
        if not 0 <= min_video_std < max_video_std:
            raise ValueError(
                f"need 0 <= min_video_std < max_video_std, got {min_video_std} and {max_video_std}"
            )
        self.loss_keys = tuple(loss_keys)
        self.video_std_key = video_std_key
        self.min_video_std = min_video_std
        self.max_video_std = max_video_std

    def _problem(self, metrics: dict[str, Any]) -> str | None:
        for name, value in metrics.items():
            if any(key in name for key in self.loss_keys) and not math.isfinite(float(value)):
                return f"{name} = {float(value)} is not finite"
        if self.video_std_key is not None and self.video_std_key in metrics:
            std = float(metrics[self.video_std_key])
            if not math.isfinite(std) or not self.min_video_std <= std <= self.max_video_std:
                return (
                    f"{self.video_std_key} = {std:.4g} is outside [{self.min_video_std}, {self.max_video_std}] "
                    "(the rollouts collapsed or exploded)"
                )
        return None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Check the step's metrics; raise before the checkpoint callbacks can save a diverged state."""
        problem = self._problem(dict(trainer.callback_metrics))
        if problem is None:
            return
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise DivergenceError(
            f"training diverged at step {trainer.global_step}: {problem}. The last good checkpoint is "
            f"{checkpoint}; resume from it with ckpt_path=... after lowering the learning rate or the "
            "guidance scale (callbacks.divergence_guard holds the bounds)."
        )
