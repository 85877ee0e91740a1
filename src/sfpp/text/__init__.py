"""Prompt encoders: the :class:`TextEncoder` interface, a prompt-embedding cache and umT5.

Encoders map prompts to zero-padded token embeddings ``(B, L, D)`` and a mask ``(B, L)``. The
built-in world's encoder is :class:`sfpp.world.WorldTextEncoder`.
"""

from sfpp.text.base import PromptEmbeddingCache, TextEncoder, check_prompts, pad_embeddings
from sfpp.text.umt5 import UMT5TextEncoder, find_umt5_dirs

__all__ = [
    "PromptEmbeddingCache",
    "TextEncoder",
    "UMT5TextEncoder",
    "check_prompts",
    "find_umt5_dirs",
    "pad_embeddings",
]
