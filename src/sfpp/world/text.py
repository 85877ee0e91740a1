"""A small text encoder for the built-in world's prompts; no download, trained with the teacher.

Words of the world's grammar (:data:`sfpp.world.grammar.VOCABULARY`) are tokens ``1..V``; ``0`` pads.
Token embeddings plus learned positions go through a few pre-norm Transformer encoder layers, and
the outputs at padding positions are zeroed, as Wan zeroes umT5's outputs past a prompt's length.
The empty prompt (the classifier-free guidance null condition) is all padding and encodes to zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sfpp.text.base import check_prompts
from sfpp.world.grammar import VOCABULARY, prompt_words

__all__ = ["PAD_ID", "WorldTextEncoder"]

PAD_ID = 0


class WorldTextEncoder(nn.Module):
    """Word-level Transformer encoder over the world's vocabulary (a :class:`~sfpp.text.base.TextEncoder`).

    Args:
        embed_dim: Width of the output embeddings (the DiT's ``text_dim``).
        max_length: Tokens per prompt after padding; a longer prompt is an error.
        num_layers: Transformer encoder layers.
        num_heads: Attention heads per layer; must divide ``embed_dim``.
        ffn_dim: Hidden width of each layer's MLP (default ``4 * embed_dim``).
        init_seed: Seed of the parameter initialisation (the global RNG is left untouched).

    Raises:
        ValueError: For impossible sizes, naming the setting.
    """

    def __init__(
        self,
        embed_dim: int = 64,
        max_length: int = 16,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.vocabulary: tuple[str, ...] = VOCABULARY
        self.word_to_id: dict[str, int] = {word: index + 1 for index, word in enumerate(VOCABULARY)}
        self._frozen = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.token_embedding = nn.Embedding(len(VOCABULARY) + 1, embed_dim, padding_idx=PAD_ID)
            self.position_embedding = nn.Parameter(torch.randn(max_length, embed_dim) * 0.02)
            layer = nn.TransformerEncoderLayer(
                d_model=embed_dim,
                nhead=num_heads,
                dim_feedforward=ffn_dim or 4 * embed_dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(embed_dim)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn prompts into padded token ids.

        Args:
            prompts: Prompts; case and punctuation are ignored, ``""`` is all padding.

        Returns:
            ``ids`` LongTensor ``(B, max_length)`` and ``mask`` BoolTensor ``(B, max_length)``, true
            at real tokens.

        Raises:
            TypeError: If ``prompts`` is a single string instead of a list.
            ValueError: For an unknown word (the message lists the vocabulary) or a prompt longer
                than ``max_length`` words.
        """
        prompts = check_prompts(prompts)
        ids = torch.full((len(prompts), self.max_length), PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt_words(prompt)
            if len(words) > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words, more than max_length={self.max_length}; "
                    f"raise max_length"
                )
            ids[row, : len(words)] = torch.tensor([self.word_to_id[word] for word in words], dtype=torch.long)
        return ids, ids != PAD_ID

    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        Args:
            prompts: ``B`` prompts.

        Returns:
            ``embeddings`` ``(B, max_length, embed_dim)``, zero at padding positions, and the
            token ``mask`` ``(B, max_length)``.
        """
        device = self.position_embedding.device
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.token_embedding(ids) + self.position_embedding  # (B, L, D)
        # An all-padding row (the empty prompt) would attend to nothing and give NaN: let it
        # attend to its first position; its outputs are zeroed below anyway.
        key_padding = ~mask
        key_padding[:, 0] = key_padding[:, 0] & mask.any(dim=1)
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=key_padding))
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as calling the module (the :class:`~sfpp.text.base.TextEncoder` interface)."""
        return self(prompts)

    def freeze(self) -> WorldTextEncoder:
        """Stop training: no gradients, eval mode, and later ``train()`` calls keep it in eval mode."""
        self.requires_grad_(False)
        self._frozen = True
        self.eval()
        return self

    def train(self, mode: bool = True) -> WorldTextEncoder:
        """Set train/eval mode; a frozen encoder always stays in eval mode."""
        return super().train(mode and not self._frozen)
