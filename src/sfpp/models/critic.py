"""ScoreCritic: the "fake score" of DMD, a trainable bidirectional copy of the teacher.

The critic tracks the distribution of the student's samples: it is trained online with the
flow-matching (denoising) loss on the student's detached outputs, and its clean estimate is the
``fake_x0`` of the DMD gradient. It starts as an exact copy of the teacher and predicts the flow
without classifier-free guidance.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.config import config_of

__all__ = ["ScoreCritic"]


def _check_bidirectional(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"ScoreCritic wraps an nn.Module (a CausalWanDiT), got {type(model).__name__}")
    if getattr(config_of(model), "causal", False):
        raise ValueError(
            "ScoreCritic needs a bidirectional model (causal=False) like the teacher; got a block-causal "
            "one. Build the critic from the teacher (ScoreCritic.from_teacher) or set causal: false"
        )


class ScoreCritic(nn.Module):
    """Trainable flow predictor of the student's distribution.

    Args:
        model: A bidirectional :class:`~sfpp.models.causal_wan.CausalWanDiT` (``causal=False``),
            used as is (see :meth:`from_teacher` for an independent copy of the teacher).

    Attributes:
        model: The wrapped network.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` is block-causal.
    """

    def __init__(self, model: CausalWanDiT) -> None:
        super().__init__()
        _check_bidirectional(model)
        self.model = model

    @classmethod
    def from_teacher(cls, teacher: CausalWanDiT) -> ScoreCritic:
        """An independent, trainable copy of the teacher (deep copy, all parameters trainable, train mode).

        Args:
            teacher: The frozen bidirectional teacher; it is not modified.

        Returns:
            A critic whose outputs equal the teacher's until it is updated.

        Raises:
            ValueError: If ``teacher`` is block-causal.
        """
        _check_bidirectional(teacher)  # before copying a large model
        model = copy.deepcopy(teacher)
        model.requires_grad_(True)
        critic = cls(model)
        critic.train()
        return critic

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predict the flow ``noise - x0`` of the student's distribution (no CFG).

        Args:
            x_t: Noisy latents ``(B, C, F, H, W)``.
            timestep: ``(B,)`` or per-frame ``(B, F)`` on the 0..1000 scale.
            context: Text embeddings ``(B, L_text, text_dim)``.

        Returns:
            The flow, shaped like ``x_t``.
        """
        return self.model(x_t, timestep, context)
