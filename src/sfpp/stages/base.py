"""What the supervised stages (teacher pretraining, ODE init) share.

Both train one model with an automatic-optimisation step, keep an EMA copy of it for samples and
evaluation, encode prompts with a text encoder, and build one optimiser (with an optional LR schedule
stepped every optimisation step) after sharding, on the trainable parameters.
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

__all__ = ["SupervisedStage"]


class SupervisedStage(L.LightningModule):
    """Base of the stages that regress one model on data: an EMA copy, prompts, one optimiser.

    Args:
        optimizer: Partial optimiser, built after sharding on the trainable parameters.
        lr_scheduler: Optional partial LR scheduler (stepped every optimisation step).
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    @property
    def trained_model(self) -> nn.Module:
        """The model this stage trains (and whose EMA copy it keeps); set by the subclass."""
        raise NotImplementedError

    def make_ema(self, decay: float, start_step: int) -> EMA:
        """An EMA copy of :attr:`trained_model`."""
        return EMA(self.trained_model, decay=decay, start_step=start_step)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(B, L, D)`` on the module's device.

        Gradients flow into the text encoder when it is trainable (the teacher's world encoder).
        """
        embeddings, _ = self.text_encoder(list(prompts))
        return embeddings.to(self.device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA copy after every optimisation step."""
        self.ema.update(self.trained_model, self.global_step)

    def configure_optimizers(self) -> Any:
        """Build the optimiser (after sharding) on the trainable parameters, with the LR schedule."""
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
