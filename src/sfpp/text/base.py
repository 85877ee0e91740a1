"""The text encoder interface and a prompt -> embedding cache for frozen encoders.

A text encoder maps a batch of prompts to token embeddings ``(B, L, D)`` padded to its
``max_length`` ``L`` and a boolean mask ``(B, L)`` of the real tokens, the conditioning the video
model cross-attends to. Frozen encoders (umT5) see the same few prompts over and over in DMD and
GRPO, so they encode each prompt once and keep the result in a :class:`PromptEmbeddingCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["PromptEmbeddingCache", "TextEncoder", "check_prompts", "pad_embeddings"]


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> ``(embeddings (B, L, D), mask (B, L) bool)`` with ``L = max_length``, ``D = embed_dim``."""

    @property
    def embed_dim(self) -> int:
        """Channels ``D`` of each token embedding."""
        ...

    @property
    def max_length(self) -> int:
        """Tokens ``L`` per prompt after padding (longer prompts are truncated)."""
        ...

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode a batch of prompts to ``(embeddings (B, L, D), mask (B, L))``."""
        ...

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Same as :meth:`encode`."""
        ...


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Validate a batch of prompts and return it as a list.

    Raises:
        TypeError: If ``prompts`` is a single string (which would be read as a batch of
            characters) or holds anything but strings.
    """
    if isinstance(prompts, str):
        raise TypeError(
            f"expected a list of prompts, got a single string {prompts[:60]!r}; wrap it in a list."
        )
    prompts = list(prompts)
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__}: {prompt!r}")
    return prompts


def pad_embeddings(entries: Sequence[tuple[Tensor, Tensor]], max_length: int) -> tuple[Tensor, Tensor]:
    """Stack per-prompt ``(embedding (n_i, D), mask (n_i,))`` pairs into a zero-padded batch.

    Args:
        entries: One pair per prompt, each at most ``max_length`` tokens long.
        max_length: Tokens ``L`` of the output; positions past a prompt's ``n_i`` are zero with a
            false mask.

    Returns:
        ``(embeddings (B, L, D), mask (B, L) bool)`` with the dtype and device of the first entry.

    Raises:
        ValueError: If there are no entries or an entry is longer than ``max_length``.
    """
    if not entries:
        raise ValueError("pad_embeddings needs at least one (embedding, mask) entry.")
    first = entries[0][0]
    embeddings = first.new_zeros(len(entries), max_length, first.shape[-1])  # (B, L, D)
    mask = torch.zeros(len(entries), max_length, dtype=torch.bool, device=first.device)  # (B, L)
    for i, (embedding, entry_mask) in enumerate(entries):
        length = embedding.shape[0]
        if length > max_length:
            raise ValueError(f"an embedding of {length} tokens does not fit max_length={max_length}.")
        embeddings[i, :length] = embedding.to(device=first.device, dtype=first.dtype)
        mask[i, :length] = entry_mask.to(first.device)
    return embeddings, mask


class PromptEmbeddingCache:
    """Least-recently-used map ``prompt -> (embedding (n, D), mask (n,))``, stored on the CPU.

    Entries are detached, compact CPU copies, so a cached slice never keeps a whole batch (or GPU
    memory) alive. An encoder may store a prompt's embedding trimmed to its ``n`` real tokens and
    re-pad it with :func:`pad_embeddings`: with umT5-XXL (D = 4096) a 512-token float32 entry
    takes 8 MiB, a typical 100-token one 1.6 MiB.

    Args:
        max_entries: Prompts kept; the least recently used one is evicted beyond that. 0 disables
            the cache (nothing is stored).

    Raises:
        ValueError: If ``max_entries`` is negative.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 0:
            raise ValueError(f"text.cache_size must be >= 0 (0 disables the cache), got {max_entries}.")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str) -> tuple[Tensor, Tensor] | None:
        """The cached ``(embedding, mask)`` of ``prompt`` (marked as recently used), or ``None``."""
        entry = self._entries.get(prompt)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(prompt)
        self.hits += 1
        return entry

    def put(self, prompt: str, embedding: Tensor, mask: Tensor) -> None:
        """Store CPU copies of ``prompt``'s ``embedding`` and ``mask``, evicting the oldest entry if full."""
        if self.max_entries == 0:
            return
        self._entries[prompt] = (_cpu_copy(embedding), _cpu_copy(mask))
        self._entries.move_to_end(prompt)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and zero the hit/miss counters."""
        self._entries.clear()
        self.hits = 0
        self.misses = 0

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"PromptEmbeddingCache(entries={len(self)}/{self.max_entries}, hits={self.hits}, misses={self.misses})"


def _cpu_copy(tensor: Tensor) -> Tensor:
    """A detached, contiguous CPU tensor with storage of its own."""
    return tensor.detach().to(device="cpu", copy=True, memory_format=torch.contiguous_format)
