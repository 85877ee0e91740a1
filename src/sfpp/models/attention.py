"""Attention backends: flash-attn (CUDA), flex attention with block masks (CUDA), SDPA (everywhere).

Every backend takes ``q, k, v`` laid out ``(B, L, num_heads, head_dim)`` (the layout flash-attn
wants, and the one the model and the KV cache keep) and an optional mask prepared by the same
backend from a :class:`~sfpp.models.frame_mask.FrameAttentionPattern`.

* ``flash``: unmasked attention only, which is what cached rollout (the cache holds exactly the
  visible frames) and bidirectional models need. Uses the FlashAttention-3 interface when it can be
  imported, else FlashAttention-2. CUDA with fp16/bf16 inputs.
* ``flex``: PyTorch FlexAttention with a block mask, for block-causal full-sequence training on
  CUDA (FlexAttention has no backward on CPU).
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a dense boolean mask.
* ``auto``: per call, flash for unmasked half-precision CUDA inputs when installed, flex for masked
  CUDA inputs, SDPA otherwise; it logs each choice once.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import cache
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange

from sfpp.models.frame_mask import FrameAttentionPattern

__all__ = [
    "AttentionBackend",
    "AutoAttention",
    "FlashAttention",
    "FlexAttention",
    "SDPAttention",
    "build_attention_backend",
    "flash_attn_available",
]

log = logging.getLogger(__name__)
_LOGGED_CHOICES: set[tuple[str, str]] = set()  # "auto" logs each choice once per process


class AttentionBackend(Protocol):
    """What the model needs from an attention implementation."""

    name: str

    def prepare_mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> Any:
        """Turn a frame pattern into this backend's mask object (``None`` when nothing is masked)."""
        ...

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """Attend ``q`` ``(B, Lq, H, D)`` to ``k, v`` ``(B, Lk, H, D)``; returns ``(B, Lq, H, D)``."""
        ...


class SDPAttention:
    """PyTorch scaled-dot-product attention; runs on every device."""

    name = "sdpa"

    def prepare_mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> torch.Tensor | None:
        """Dense boolean token mask, or ``None`` for bidirectional attention."""
        if not pattern.is_causal:
            return None
        return pattern.token_mask(num_frames, tokens_per_frame, device)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See :class:`AttentionBackend`.

        On the CPU, bf16/fp16 inputs (CPU autocast) are attended in float32 and the result cast
        back (why: "Attention backends" in ``docs/concepts.md``).
        """
        dtype = q.dtype
        if q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(
                    q.float().transpose(1, 2),
                    k.float().transpose(1, 2),
                    v.float().transpose(1, 2),
                    attn_mask=mask,
                )  # (B, H, Lq, D)
            return out.transpose(1, 2).to(dtype)  # (B, Lq, H, D)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )  # (B, H, Lq, D)
        return out.transpose(1, 2)  # (B, Lq, H, D)


@cache
def _flash_attn_func() -> tuple[str, Callable[..., Any]] | None:
    """The best importable flash-attn entry point, as ``(interface name, function)``."""
    for module_name, label in (("flash_attn_interface", "fa3"), ("flash_attn", "fa2")):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return label, module.flash_attn_func
    return None


def flash_attn_available() -> bool:
    """Whether flash-attn (FA3 or FA2) can be imported and CUDA is present."""
    return torch.cuda.is_available() and _flash_attn_func() is not None


class FlashAttention:
    """FlashAttention-3 (``flash_attn_interface``) or FlashAttention-2 (``flash_attn``), unmasked."""

    name = "flash"

    def __init__(self) -> None:
        found = _flash_attn_func()
        if found is None:
            raise ImportError(
                "attention_backend='flash' needs flash-attn: install the `flash` extra on a CUDA machine "
                "(pip install 'sfpp[flash]'), or use attention_backend='auto' or 'sdpa'"
            )
        self.interface, self._func = found

    def prepare_mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> None:
        """Flash attention is only used unmasked; a block-causal pattern is an error."""
        if pattern.is_causal and num_frames > (pattern.num_frames_per_chunk or 0):
            raise ValueError(
                "attention_backend='flash' cannot apply a block-causal mask; use 'flex' or 'auto' for "
                "full-sequence causal training (cached rollout works with flash)"
            )
        return None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """See :class:`AttentionBackend`."""
        if mask is not None:
            raise ValueError("FlashAttention takes no mask")
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"flash-attn needs fp16/bf16 CUDA tensors, got {q.dtype} on {q.device}; "
                "use attention_backend='auto' or 'sdpa'"
            )
        out = self._func(q, k, v, causal=False)
        return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE


class FlexAttention:
    """FlexAttention with block masks built from the frame pattern (CUDA)."""

    name = "flex"

    def __init__(self) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = create_block_mask
        self._flex_attention = torch.compile(flex_attention, dynamic=False)

    def prepare_mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> Any:
        """A ``BlockMask`` for the pattern over ``num_frames * tokens_per_frame`` tokens."""
        if not pattern.is_causal:
            return None
        num_tokens = num_frames * tokens_per_frame

        def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return pattern.visible(q_idx // tokens_per_frame, kv_idx // tokens_per_frame)

        return self._create_block_mask(mask_mod, None, None, num_tokens, num_tokens, device=device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """See :class:`AttentionBackend`."""
        q, k, v = (rearrange(t, "b l h d -> b h l d") for t in (q, k, v))  # the layout flex attention takes
        return rearrange(self._flex_attention(q, k, v, block_mask=mask), "b h l d -> b l h d")


class AutoAttention:
    """Chooses the best available backend per call and logs each choice once."""

    name = "auto"

    def __init__(self) -> None:
        self._backends: dict[str, AttentionBackend] = {}

    def _get(self, name: str, reason: str) -> AttentionBackend:
        if name not in self._backends:
            self._backends[name] = _BACKENDS[name]()
        if (name, reason) not in _LOGGED_CHOICES:
            _LOGGED_CHOICES.add((name, reason))
            log.info("attention backend 'auto' chose %s for %s", name, reason)
        return self._backends[name]

    def _for_mask(self, device: torch.device) -> AttentionBackend:
        if device.type == "cuda":
            return self._get("flex", "masked attention on CUDA")
        return self._get("sdpa", f"masked attention on {device.type}")

    def prepare_mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> Any:
        """Mask for whichever backend masked calls will use on ``device``."""
        if not pattern.is_causal:
            return None
        return (
            device.type,
            self._for_mask(device).prepare_mask(pattern, num_frames, tokens_per_frame, device),
        )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """See :class:`AttentionBackend`."""
        if mask is not None:
            return self._for_mask(q.device)(q, k, v, mask[1])
        if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
            return self._get("flash", "unmasked half-precision CUDA attention")(q, k, v)
        return self._get("sdpa", f"unmasked {q.dtype} attention on {q.device.type}")(q, k, v)


_BACKENDS: dict[str, type] = {
    "sdpa": SDPAttention,
    "flash": FlashAttention,
    "flex": FlexAttention,
    "auto": AutoAttention,
}


def build_attention_backend(name: str) -> AttentionBackend:
    """Instantiate a backend by name: ``auto``, ``flash``, ``flex`` or ``sdpa``.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention_backend {name!r}; choose one of {sorted(_BACKENDS)}")
    return _BACKENDS[name]()
