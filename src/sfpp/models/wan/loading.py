"""Loading Wan2.1 weights of either format into :class:`~sfpp.models.causal_wan.CausalWanDiT`.

Typical use::

    teacher = build_from_pretrained("/models/Wan2.1-T2V-1.3B", dtype=torch.bfloat16)
    student = build_from_pretrained("/models/Wan2.1-T2V-1.3B", causal=True, num_frames_per_chunk=3)
    save_wan_weights(student, "/runs/student/final")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.wan.configs import CONFIG_FILE, read_config
from sfpp.models.wan.files import load_state_dict_file
from sfpp.models.wan.keys import WanWeightsError, format_keys, to_wan_names

__all__ = ["build_from_pretrained", "load_wan_weights"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def load_wan_weights(
    model: CausalWanDiT,
    path: PathLike | Mapping[str, torch.Tensor],
    strict: bool = True,
    checkpoint_key: str | None = None,
) -> CausalWanDiT:
    """Load Wan2.1 weights of either format into a :class:`CausalWanDiT`, checking every key.

    Args:
        model: The model to fill (weights are cast to its parameters' dtype and device).
        path: Weight file, checkpoint directory (see :func:`load_state_dict_file`) or a state dict.
        strict: Refuse missing and unexpected weights. With ``strict=False`` they are logged as a
            warning and skipped; mis-shaped weights are always refused.
        checkpoint_key: Entry of a nested torch checkpoint to read.

    Returns:
        ``model``, loaded.

    Raises:
        WanWeightsError: Listing missing, unexpected and mis-shaped keys (with both shapes), at
            most :data:`MAX_LISTED_KEYS` per category plus a count; also for I2V checkpoints.
        FileNotFoundError: See :func:`load_state_dict_file`.
    """
    if isinstance(path, Mapping):
        raw = dict(path)
        source = "the given state dict"
    else:
        raw = load_state_dict_file(path, checkpoint_key)
        source = str(path)
    state_dict, unmapped = to_wan_names(raw)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected)) + sorted(unmapped)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state_dict) & set(expected)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"  missing from the checkpoint ({len(missing)}):\n{format_keys(missing)}")
    if unexpected:
        problems.append(f"  unexpected in the checkpoint ({len(unexpected)}):\n{format_keys(unexpected)}")
    if mismatched:
        problems.append(f"  shape mismatches ({len(mismatched)}):\n{format_keys(mismatched)}")
    if mismatched or (problems and strict):
        raise WanWeightsError(
            f"weights from {source} do not fit the model (dim={model.config.dim}, num_layers={model.config.num_layers}, "
            f"num_heads={model.config.num_heads}); check the config matches the checkpoint:\n"
            + "\n".join(problems)
        )
    if problems:
        log.warning("loading %s with strict=False:\n%s", source, "\n".join(problems))
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    return model


def build_from_pretrained(
    path: PathLike,
    causal: bool = False,
    num_frames_per_chunk: int = 3,
    attention_backend: str = "auto",
    dtype: torch.dtype | None = None,
    checkpoint_key: str | None = None,
) -> CausalWanDiT:
    """Build a :class:`CausalWanDiT` from a local checkpoint directory and load its weights.

    The directory's ``config.json`` decides the architecture: an sfpp config
    (``_class_name: CausalWanDiT``), a diffusers ``WanTransformer3DModel`` config (by class name or
    its ``num_attention_heads`` / ``attention_head_dim`` / ``in_channels`` keys), or else an
    original Wan2.1 config. The weights may be in either naming. Nothing is downloaded.

    Args:
        path: Checkpoint directory, or a weight file with ``config.json`` beside it.
        causal: Block-causal student instead of a bidirectional teacher or critic.
        num_frames_per_chunk: Latent frames per chunk of the block-causal model.
        attention_backend: ``auto``, ``flash``, ``flex`` or ``sdpa``.
        dtype: Parameter dtype, e.g. ``torch.bfloat16`` (``None``: float32). The model is built in it
            directly and the weights are cast on load; the RoPE tables stay float32.
        checkpoint_key: Entry of a nested torch checkpoint file to read.

    Returns:
        The loaded model (weights strictly checked).

    Raises:
        FileNotFoundError: Missing directory, ``config.json`` or weight files.
        ValueError: Unsupported configs; :class:`WanWeightsError` for weights not fitting the config.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no Wan checkpoint at {path}; expected a directory with {CONFIG_FILE} and weights"
        )
    _, config = read_config(path)
    config = config.with_build(
        causal=causal, num_frames_per_chunk=num_frames_per_chunk, attention_backend=attention_backend
    )
    with _default_dtype(dtype):
        model = CausalWanDiT(config)
    return load_wan_weights(model, path, strict=True, checkpoint_key=checkpoint_key)


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (no float32 copy of a large model in memory).

    Buffers that the model computes in an explicit precision (the float32 RoPE tables) keep it.
    """
    if dtype is None:
        yield
        return
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
