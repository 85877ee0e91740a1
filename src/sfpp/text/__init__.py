"""Prompt encoders: the :class:`TextEncoder` interface, a prompt-embedding cache, umT5 and the world's encoder.

Encoders map prompts to zero-padded token embeddings ``(B, L, D)`` and a mask ``(B, L)``.
"""

from sfpp.text.base import PromptEmbeddingCache, TextEncoder, check_prompts, pad_embeddings
from sfpp.text.umt5 import UMT5TextEncoder, find_umt5_dirs
from sfpp.text.world import WorldTextEncoder

__all__ = [
    "PromptEmbeddingCache",
    "TextEncoder",
    "UMT5TextEncoder",
    "WorldTextEncoder",
    "check_prompts",
    "find_umt5_dirs",
    "pad_embeddings",
]
