"""Handling of the frozen helper components a stage holds (text encoders, codecs).

Some are ``nn.Module``s (the world's text encoder, trained with the teacher, then frozen); others are
plain objects that own their frozen models and devices (umT5, the Wan VAE). Stages treat both alike
through these two functions.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["freeze", "move_plain_components"]

T = TypeVar("T")


def freeze(component: T) -> T:
    """Stop gradients and dropout of a component; plain objects are frozen by design.

    A component's own ``freeze()`` is preferred: it can keep it in eval mode through Lightning's
    ``train()`` calls.
    """
    if hasattr(component, "freeze"):
        component.freeze()
    elif isinstance(component, nn.Module):
        component.requires_grad_(False).eval()
    return component


def move_plain_components(device: torch.device, *components: Any) -> None:
    """Move components that Lightning does not move (not ``nn.Module``s, but with a ``to``) to ``device``."""
    for component in components:
        if component is not None and not isinstance(component, nn.Module) and hasattr(component, "to"):
            component.to(device)
