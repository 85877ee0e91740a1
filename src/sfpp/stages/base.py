"""What the supervised stages (teacher pretraining, ODE init) share.

Both train one model with an automatic-optimisation step, keep an EMA copy of it for samples and
evaluation, encode prompts with a text encoder, and build one optimiser (with an optional LR schedule
stepped every optimisation step) after sharding, on the trainable parameters, and draw every random
number of a step from a generator seeded by ``(seed, step)`` (:mod:`sfpp.stages.draws`), so that a
resumed run, on any rank count, continues exactly.
:class:`SupervisedStage` holds those parts; a stage names its trained model (``trained_model``) and
adds its ``training_step``. The data-free student stages share :class:`~sfpp.stages.student.StudentStage`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from sfpp.models.ema import EMA
from sfpp.stages.checkpoints import plain_hyperparameters, prime_optimizer_state
from sfpp.stages.draws import SUPERVISED_STREAM, GlobalBatchDraws, rows_of_global_batch, step_generator

__all__ = ["SupervisedStage"]


class SupervisedStage(L.LightningModule):
    """Base of the stages that regress one model on data: an EMA copy, prompts, one optimiser.

    Args:
        optimizer: Partial optimiser, built after sharding on the trainable parameters.
        lr_scheduler: Optional partial LR scheduler (stepped every optimisation step).
        seed: Base seed of the per-step random draws (:meth:`step_draws`).
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.seed = seed

    @property
    def trained_model(self) -> nn.Module:
        """The model this stage trains (and whose EMA copy it keeps); set by the subclass."""
        raise NotImplementedError

    def make_ema(self, decay: float, start_step: int) -> EMA:
        """An EMA copy of :attr:`trained_model`."""
        return EMA(self.trained_model, decay=decay, start_step=start_step)

    def step_draws(self, batch_idx: int, local_batch: int) -> GlobalBatchDraws:
        """The random draws of this training batch: its rows of the update's global batch.

        Seeded by ``(seed, global step)``: the same numbers after a resume, and N processes (or k
        accumulated micro-batches) draw what one process with the whole batch draws.
        """
        trainer = self._trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        micro = batch_idx % accumulate
        rows, global_batch = rows_of_global_batch(trainer, local_batch, micro, accumulate)
        generator = step_generator(self.seed, SUPERVISED_STREAM, self.global_step)
        return GlobalBatchDraws(generator, local_batch, rows, global_batch, self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(B, L, D)`` on the module's device.

        Gradients flow into the text encoder when it is trainable (the teacher's world encoder).
        """
        embeddings, _ = self.text_encoder(list(prompts))
        return embeddings.to(self.device)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then fold the new weights into the EMA copy.

        Inside the step, before any callback's ``on_train_batch_end``, so that a checkpoint written
        there (``ModelCheckpoint``) holds the EMA of the weights it holds, and once per update when
        batches are accumulated. The EMA is told the step count after this update.
        """
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.trained_model, self.global_step + 1)

    def on_train_start(self) -> None:
        """Prime the optimiser's state (:func:`~sfpp.stages.checkpoints.prime_optimizer_state`)."""
        for optimizer in self.trainer.optimizers:
            prime_optimizer_state(optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Plain hyperparameters: the checkpoint loads with ``weights_only=True``."""
        plain_hyperparameters(checkpoint)

    def configure_optimizers(self) -> Any:
        """Build the optimiser (after sharding) on the trainable parameters, with the LR schedule."""
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
