"""Step checkpoints that also keep the final state of a run."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["FinalStepCheckpoint"]


class FinalStepCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that also saves when training ends.

    With ``every_n_train_steps=N``, Lightning saves at multiples of ``N`` only, and its own
    end-of-training save of ``last.ckpt`` happens only if nothing was saved before. A run whose
    ``max_steps`` is not a multiple of ``N`` would end with a ``last.ckpt`` up to ``N - 1`` steps old
    (``toy_teacher``: 3000 of its 3600 steps), and every later stage would start from it. This
    callback saves the final step as well, like the periodic saves: a step checkpoint (kept by
    ``save_top_k`` like the others; without a ``monitor`` only) and ``last.ckpt``. Same arguments as
    ``ModelCheckpoint``.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final step unless it was saved already (or the run saves nothing)."""
        if self._every_n_train_steps >= 1 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            if self.monitor is None and self.save_top_k != 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
