"""Wan2.1 checkpoint files: reading weight files and directories, writing sfpp checkpoints.

Reading goes through :func:`huggingface_hub.load_state_dict_from_file` (``.safetensors``, and
``.pt`` / ``.pth`` / ``.bin`` with ``weights_only``); a directory's shards are the ones its index
lists (or every ``*.safetensors`` file). Writing goes through
:func:`huggingface_hub.save_torch_state_dict`, which shards large models and writes their index.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import load_state_dict_from_file, save_torch_state_dict
from torch import nn

from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.wan.configs import CONFIG_FILE, sfpp_config_json
from sfpp.models.wan.keys import MAX_LISTED_KEYS, StateDict, WanWeightsError, format_keys, strip_prefixes

__all__ = ["DIFFUSERS_INDEX_FILE", "SFPP_WEIGHTS_FILE", "load_state_dict_file", "save_wan_weights"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
DIFFUSERS_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SFPP_WEIGHTS_FILE = "model.safetensors"
#: Largest weight file :func:`save_wan_weights` writes before sharding.
MAX_SHARD_SIZE = "5GB"

_EXPECTED_FILES = (
    "a *.safetensors, *.pt, *.pth or *.bin file, or a directory holding *.safetensors weights "
    f"(diffusion_pytorch_model.safetensors, {SFPP_WEIGHTS_FILE}, or shards listed by "
    f"{DIFFUSERS_INDEX_FILE} / any *.index.json)"
)

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_CONVENTIONAL_NESTING = ("state_dict", "model", "module")


def _unwrap(obj: Any, checkpoint_key: str | None, path: Path) -> StateDict:
    """The tensor dict inside a loaded torch checkpoint."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            raise KeyError(
                f"checkpoint_key={checkpoint_key!r} is not in {path}; its top-level keys: {sorted(obj)}"
            )
        obj = obj[checkpoint_key]
    elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in _CONVENTIONAL_NESTING if isinstance(obj.get(k), Mapping)]
        if len(nested) != 1:
            raise ValueError(
                f"{path} is not a flat state dict; pass checkpoint_key= to pick the model's weights "
                f"among its top-level keys {sorted(obj)}"
            )
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(f"the selected entry of {path} is a {type(obj).__name__}, not a state dict")
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path}: entries that are not tensors: {not_tensors[:MAX_LISTED_KEYS]}")
    return dict(obj)


def _load_one_file(path: Path, checkpoint_key: str | None = None) -> StateDict:
    """Load one ``.safetensors`` or torch weight file to CPU."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if checkpoint_key is not None:
            raise ValueError(f"checkpoint_key applies to nested torch checkpoints, not to {path}")
        return load_state_dict_from_file(path, map_location="cpu")
    if suffix in _TORCH_SUFFIXES:
        raw = load_state_dict_from_file(path, map_location="cpu", weights_only=True, safe=False)
        return _unwrap(raw, checkpoint_key, path)
    raise ValueError(f"unsupported weight file {path}; expected {_EXPECTED_FILES}")


def _merge(parts: Iterable[tuple[Path, StateDict]]) -> StateDict:
    """Merge shards, refusing a key that appears in two of them."""
    merged: StateDict = {}
    origin: dict[str, Path] = {}
    for path, part in parts:
        for key, value in part.items():
            if key in merged:
                raise WanWeightsError(
                    f"weight {key!r} appears in both {origin[key].name} and {path.name} in {path.parent}; "
                    "keep a single copy of the model's weights in the directory"
                )
            merged[key], origin[key] = value, path
    return merged


def _load_directory(directory: Path) -> StateDict:
    """Load every shard of a checkpoint directory (index-driven when an index exists)."""
    preferred = directory / DIFFUSERS_INDEX_FILE
    indexes = [preferred] if preferred.is_file() else sorted(directory.glob("*.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"several weight indexes in {directory}: {[p.name for p in indexes]}; keep one")
    if indexes:
        with indexes[0].open() as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        absent = [p.name for p in shards if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"{indexes[0]} lists shards missing from {directory}: {absent}")
        merged = _merge((p, _load_one_file(p)) for p in shards)
        lost = sorted(set(weight_map) - set(merged))
        if lost:
            raise WanWeightsError(
                f"weights listed in {indexes[0].name} but absent from its shards:\n{format_keys(lost)}"
            )
        return merged
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weight files in directory {directory}; expected {_EXPECTED_FILES}")
    return _merge((p, _load_one_file(p)) for p in files)


def load_state_dict_file(path: PathLike, checkpoint_key: str | None = None) -> StateDict:
    """Read a state dict from a weight file or a checkpoint directory, onto the CPU.

    * ``.safetensors``: read with :func:`huggingface_hub.load_state_dict_from_file`;
    * ``.pt`` / ``.pth`` / ``.bin``: :func:`torch.load` with ``weights_only=True``; a nested
      checkpoint is unwrapped through ``checkpoint_key`` or, failing that, its only
      ``state_dict`` / ``model`` / ``module`` entry;
    * a directory: the shards named by ``diffusion_pytorch_model.safetensors.index.json`` (or the
      one ``*.index.json``), else every ``*.safetensors`` file in sorted order, merged. Other files
      (a T5 or VAE ``.pth`` next to the transformer) are not read.

    Args:
        path: File or directory.
        checkpoint_key: Entry of a nested torch checkpoint holding the model (e.g. ``generator_ema``).

    Returns:
        The tensors by name, unconverted.

    Raises:
        FileNotFoundError: If the path does not exist or a directory holds no weight files (the
            message names the path and the files expected).
        ValueError: For unsupported files, nested checkpoints without a clear entry, or a weight
            present in two shards.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Wan checkpoint at {path}; expected {_EXPECTED_FILES}")
    if path.is_dir():
        if checkpoint_key is not None:
            raise ValueError(
                f"checkpoint_key applies to a single torch checkpoint file, not to the directory {path}"
            )
        return _load_directory(path)
    return _load_one_file(path, checkpoint_key)


def save_wan_weights(
    model: nn.Module, directory: PathLike, max_shard_size: int | str = MAX_SHARD_SIZE
) -> Path:
    """Write a model as ``model.safetensors`` (original Wan names) plus ``config.json``.

    The config is ``model.config``'s architecture under ``"_class_name": "CausalWanDiT"``, so
    :func:`~sfpp.models.wan.loading.build_from_pretrained` rebuilds the same model; ``causal`` /
    ``num_frames_per_chunk`` / ``attention_backend`` are chosen again when building. The weights
    keep their dtype; a model larger than ``max_shard_size`` is written as
    ``model-0000k-of-0000n.safetensors`` shards with a ``model.safetensors.index.json``. The weight
    files also load in tools that read original Wan names.

    Args:
        model: A :class:`CausalWanDiT` (a ``torch.compile`` wrapper around one is unwrapped).
        directory: Created if needed; existing files of the same names are overwritten.
        max_shard_size: Largest weight file, in bytes or as ``"5GB"``.

    Returns:
        The directory.

    Raises:
        TypeError: If ``model`` is not a :class:`CausalWanDiT`.
    """
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, CausalWanDiT):
        raise TypeError(f"save_wan_weights expects a CausalWanDiT, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(model.state_dict()).items()}
    save_torch_state_dict(
        tensors,
        directory,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
        metadata={"format": "pt", "layout": "wan2.1-original"},
    )
    with (directory / CONFIG_FILE).open("w") as f:
        json.dump(sfpp_config_json(model.config), f, indent=2)
        f.write("\n")
    num_params = sum(math.prod(t.shape) for t in tensors.values())
    log.info("saved %d tensors (%d parameters) to %s", len(tensors), num_params, directory)
    return directory
