"""umT5 text encoder (Wan's: umT5-XXL, 4096 channels, 512 tokens) from a local path, frozen and cached.

Like Wan, a prompt's embedding holds its real tokens (including the end-of-sequence token) and is
zero-padded to ``max_length``; the mask marks the real tokens. Each prompt is encoded once and kept
in a :class:`~sfpp.text.base.PromptEmbeddingCache` (on the CPU, trimmed to its real tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfpp.codecs.base import resolve_dtype
from sfpp.text.base import PromptEmbeddingCache, check_prompts, pad_embeddings

__all__ = ["UMT5TextEncoder", "find_umt5_dirs"]

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


def find_umt5_dirs(path: str | Path) -> tuple[Path, Path]:
    """Find the umT5 encoder and its tokenizer under ``path``.

    The model is looked for in ``path/text_encoder`` and then ``path``; the tokenizer in
    ``path/tokenizer`` and then ``path``. So both a plain directory (model and tokenizer saved
    together) and a diffusers Wan pipeline directory (``text_encoder/``, ``tokenizer/``) work.

    Args:
        path: A local directory.

    Returns:
        ``(model_dir, tokenizer_dir)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist, or no model or tokenizer was found; the
            message lists every directory looked at and the files expected there.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"umT5 path '{root}' does not exist or is not a directory. Set text.path to a local directory "
            f"with the encoder ({MODEL_CONFIG} and {' or '.join(MODEL_WEIGHTS)}) and its tokenizer "
            f"({' or '.join(TOKENIZER_FILES)}), or to a diffusers Wan pipeline directory with text_encoder/ "
            "and tokenizer/ subfolders; weights are never downloaded."
        )

    def has_model(directory: Path) -> bool:
        return (directory / MODEL_CONFIG).is_file() and any(
            (directory / name).is_file() for name in MODEL_WEIGHTS
        )

    def has_tokenizer(directory: Path) -> bool:
        return any((directory / name).is_file() for name in TOKENIZER_FILES)

    model_dirs = (root / "text_encoder", root)
    tokenizer_dirs = (root / "tokenizer", root)
    model_dir = next((d for d in model_dirs if has_model(d)), None)
    tokenizer_dir = next((d for d in tokenizer_dirs if has_tokenizer(d)), None)
    problems = []
    if model_dir is None:
        problems.append(
            f"no umT5 encoder ({MODEL_CONFIG} plus {' or '.join(MODEL_WEIGHTS)}) in "
            + " or ".join(f"'{d}'" for d in model_dirs)
        )
    if tokenizer_dir is None:
        problems.append(
            f"no tokenizer ({' or '.join(TOKENIZER_FILES)}) in "
            + " or ".join(f"'{d}'" for d in tokenizer_dirs)
        )
    if problems:
        raise FileNotFoundError(f"Cannot load umT5 from text.path='{root}': {'; '.join(problems)}.")
    assert model_dir is not None and tokenizer_dir is not None
    return model_dir, tokenizer_dir


class UMT5TextEncoder:
    """Frozen umT5 encoder: prompts -> ``(embeddings (B, max_length, D), mask (B, max_length))``.

    The tokenizer and weights load lazily on the first prompt that is not cached. Outputs are in
    ``dtype`` on ``device``; padded positions are exactly zero. Prompts longer than ``max_length``
    tokens are truncated, with a warning.

    Args:
        path: Local directory with the model and tokenizer (see :func:`find_umt5_dirs`).
        max_length: Tokens per prompt after padding (Wan: 512).
        dtype: Dtype of the weights and outputs (a dtype or its name, e.g. ``"bfloat16"``).
        device: Device the encoder runs on and outputs live on.
        cache_size: Prompts whose embeddings are kept (LRU); 0 disables the cache.
        encode_batch_size: Uncached prompts encoded per forward pass.

    Raises:
        FileNotFoundError: If ``path`` holds no umT5 encoder or tokenizer.
        ValueError: For a non-positive ``max_length`` or ``encode_batch_size``, a negative
            ``cache_size``, or a config that is not a umT5 one.
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int = 512,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        cache_size: int = 1024,
        encode_batch_size: int = 32,
    ) -> None:
        from transformers import AutoConfig

        if max_length < 1:
            raise ValueError(f"text.max_length must be positive, got {max_length}.")
        if encode_batch_size < 1:
            raise ValueError(f"text.encode_batch_size must be positive, got {encode_batch_size}.")
        self.model_dir, self.tokenizer_dir = find_umt5_dirs(path)
        self.config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        if self.config.model_type != "umt5":
            raise ValueError(
                f"'{self.model_dir / MODEL_CONFIG}' describes a {self.config.model_type!r} model, not 'umt5'; "
                "point text.path at the umT5 text encoder (the text_encoder/ folder of a diffusers Wan pipeline)."
            )
        self._max_length = max_length
        self.dtype = resolve_dtype(dtype, "text.dtype")
        self.device = torch.device(device)
        self.encode_batch_size = encode_batch_size
        self.cache = PromptEmbeddingCache(cache_size)
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def embed_dim(self) -> int:
        """``d_model`` of the encoder (4096 for umT5-XXL)."""
        return int(self.config.d_model)

    @property
    def max_length(self) -> int:
        """Tokens per prompt after padding."""
        return self._max_length

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first access."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The frozen ``UMT5EncoderModel`` in eval mode, loaded on first access."""
        if self._model is None:
            from transformers import UMT5EncoderModel

            model = UMT5EncoderModel.from_pretrained(self.model_dir, dtype=self.dtype, local_files_only=True)
            model.requires_grad_(False)
            self._model = model.eval().to(self.device)
        return self._model

    def to(self, device: torch.device | str) -> UMT5TextEncoder:
        """Run the encoder and return outputs on ``device`` from now on; returns ``self``."""
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Embed a batch of prompts, encoding only those not in the cache.

        Args:
            prompts: ``B`` prompts (a list, not a single string).

        Returns:
            ``(embeddings (B, max_length, D), mask (B, max_length) bool)`` on :attr:`device`.

        Raises:
            TypeError: If ``prompts`` is a single string or holds non-strings.
            ValueError: If ``prompts`` is empty.
        """
        prompts = check_prompts(prompts)
        if not prompts:
            raise ValueError("UMT5TextEncoder.encode needs at least one prompt.")
        entries: dict[str, tuple[Tensor, Tensor]] = {}
        missing = []
        for prompt in dict.fromkeys(prompts):  # unique prompts, in order
            entry = self.cache.get(prompt)
            if entry is None:
                missing.append(prompt)
            else:
                entries[prompt] = entry
        for start in range(0, len(missing), self.encode_batch_size):
            batch = missing[start : start + self.encode_batch_size]
            for prompt, entry in zip(batch, self._encode_uncached(batch), strict=True):
                entries[prompt] = entry
                self.cache.put(prompt, *entry)
        embeddings, mask = pad_embeddings([entries[p] for p in prompts], self.max_length)
        return embeddings.to(self.device), mask.to(self.device)

    __call__ = encode

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[tuple[Tensor, Tensor]]:
        """Run the encoder on ``prompts``; returns per-prompt CPU ``(embedding (n, D), mask (n,))``."""
        self._warn_if_truncated(prompts)
        tokens = self.tokenizer(
            prompts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(self.device)  # (B, n_max)
        attention_mask = tokens["attention_mask"].to(self.device)  # (B, n_max)
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, n_max, D)
        entries = []
        for i in range(len(prompts)):
            real = attention_mask[i].bool()  # (n_max,), works for left or right padding
            embedding = hidden[i][real].cpu()  # (n_i, D): the real tokens only
            entries.append((embedding, torch.ones(embedding.shape[0], dtype=torch.bool)))
        return entries

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        too_long = [(p, n) for p, n in zip(prompts, lengths, strict=True) if n > self.max_length]
        if too_long:
            examples = "; ".join(f"{p[:50]!r}... ({n} tokens)" for p, n in too_long[:3])
            warnings.warn(
                f"{len(too_long)} prompt(s) exceed text.max_length={self.max_length} tokens and are truncated: "
                f"{examples}",
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"UMT5TextEncoder(model_dir='{self.model_dir}', max_length={self.max_length}, dtype={self.dtype}, "
            f"device={self.device}, cache={self.cache})"
        )
