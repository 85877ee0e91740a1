"""Exponential moving average of a model's weights, as a module so it is checkpointed with its owner."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """An EMA copy of a module: ``ema = decay * ema + (1 - decay) * online`` after ``start_step``.

    Before ``start_step`` the copy tracks the online weights exactly. The copy is frozen and kept
    in eval mode; its state lives in the owner's ``state_dict`` (so resuming restores it).

    Args:
        module: The online module to track.
        decay: EMA decay per update.
        start_step: Updates before which the copy is overwritten instead of averaged.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, step: int) -> None:
        """Fold the online weights into the average (or copy them before ``start_step``).

        Frozen parameters (``requires_grad=False``: the base weights under LoRA) never change, so
        only the trained ones are averaged.
        """
        decay = self.decay if step >= self.start_step else 0.0
        for ema_p, p in zip(self.module.parameters(), online.parameters(), strict=True):
            if p.requires_grad:
                ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), online.buffers(), strict=True):
            ema_b.copy_(b)

    def train(self, mode: bool = True) -> EMA:
        """The EMA copy always stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        """Call the averaged module."""
        return self.module(*args, **kwargs)
