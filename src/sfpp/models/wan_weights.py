"""Wan2.1 checkpoints (diffusers or original format) into :class:`~sfpp.models.causal_wan.CausalWanDiT`.

Three checkpoint layouts are understood, always read from local disk (never from a hub):

* **original** Wan2.1 (``Wan-AI/Wan2.1-T2V-*``): a ``config.json`` with ``WanModel`` keys
  (``dim``, ``in_dim``, ``num_heads`` ...) and weights whose names are already ours
  (``blocks.N.self_attn.q``, ``head.modulation`` ...), possibly under a ``model.diffusion_model.``,
  ``model.``, ``module.`` or ``_orig_mod.`` prefix;
* **diffusers** (``Wan-AI/Wan2.1-T2V-*-Diffusers/transformer``): a ``WanTransformer3DModel``
  ``config.json`` and diffusers names, renamed by :func:`diffusers_to_wan_state_dict`;
* **sfpp**, written by :func:`save_wan_weights`: original names in ``model.safetensors`` and the
  :class:`CausalWanDiT` architecture arguments in ``config.json`` (``"_class_name": "CausalWanDiT"``).

Only text-to-video models are supported: image-to-video checkpoints (image embedder, extra image
keys/values in cross-attention) raise :class:`WanWeightsError`.

Typical use::

    teacher = build_from_pretrained("/models/Wan2.1-T2V-1.3B", dtype=torch.bfloat16)
    student = build_from_pretrained("/models/Wan2.1-T2V-1.3B", causal=True, num_frames_per_chunk=3)
    save_wan_weights(student, "/runs/student/final")
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sfpp.models.causal_wan import CausalWanDiT

__all__ = [
    "ARCHITECTURE_KEYS",
    "WanWeightsError",
    "architecture_config",
    "build_from_pretrained",
    "config_from_diffusers",
    "config_from_original",
    "detect_format",
    "diffusers_to_wan_state_dict",
    "load_state_dict_file",
    "load_wan_weights",
    "original_to_wan_state_dict",
    "read_config",
    "save_wan_weights",
]

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
PathLike = str | os.PathLike

#: Prefixes that training frameworks put in front of the model's own names; stripped on load.
STRIPPED_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "model.", "module.", "_orig_mod.")
#: Weight files of a checkpoint directory, in order of preference.
DIFFUSERS_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SFPP_WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SFPP_CLASS_NAME = "CausalWanDiT"
DIFFUSERS_CLASS_NAME = "WanTransformer3DModel"
#: Names shown per category in an error message before "... and N more".
MAX_LISTED_KEYS = 20

_EXPECTED_FILES = (
    "a *.safetensors, *.pt, *.pth or *.bin file, or a directory holding *.safetensors weights "
    f"(diffusion_pytorch_model.safetensors, {SFPP_WEIGHTS_FILE}, or shards listed by "
    f"{DIFFUSERS_INDEX_FILE} / any *.index.json)"
)


class WanWeightsError(ValueError):
    """A checkpoint that does not fit the model: missing, unexpected or mis-shaped weights."""


# 1. Key mapping -------------------------------------------------------------------------------

# diffusers module path -> our module path, outside the blocks.
_DIFFUSERS_TOP_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "proj_out": "head.head",
}
# diffusers module path -> our module path, inside ``blocks.N.``.
_DIFFUSERS_BLOCK_MODULES: dict[str, str] = {
    **{
        f"{attn}.{theirs}": f"{ours_attn}.{ours}"
        for attn, ours_attn in (("attn1", "self_attn"), ("attn2", "cross_attn"))
        for theirs, ours in (
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "o"),
            ("norm_q", "norm_q"),
            ("norm_k", "norm_k"),
        )
    },
    # diffusers swaps the names of the two block norms: its norm2 is the (affine) cross-attention
    # norm, the original's norm3; the feed-forward norms (diffusers norm3, original norm2) have no
    # parameters.
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Substrings of image-to-video weights, in either naming.
_I2V_MARKERS: tuple[str, ...] = (
    # diffusers
    "add_k_proj",
    "add_v_proj",
    "norm_added_k",
    "norm_added_q",
    "condition_embedder.image_embedder",
    "to_added_kv",
    # original Wan
    "img_emb.",
    ".k_img.",
    ".v_img.",
    ".norm_k_img.",
)
_FUSED_MARKERS: tuple[str, ...] = (".to_qkv.", ".to_kv.")


def _strip_prefix(key: str) -> str:
    """Remove framework prefixes (``model.diffusion_model.``, ``module.`` ...) from one key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
                break
    return key


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Strip framework prefixes from every key; two keys collapsing onto one name is an error."""
    out: StateDict = {}
    for key, value in state_dict.items():
        new_key = _strip_prefix(key)
        if new_key in out:
            raise WanWeightsError(
                f"checkpoint key {key!r} and another key both map to {new_key!r} once the prefixes "
                f"{list(STRIPPED_PREFIXES)} are stripped; the checkpoint holds two copies of the model"
            )
        out[new_key] = value
    return out


def _check_not_i2v(keys: Iterable[str]) -> None:
    """Raise if any key belongs to an image-to-video model."""
    i2v = sorted(k for k in keys if any(marker in k for marker in _I2V_MARKERS))
    if i2v:
        raise WanWeightsError(
            "image-to-video (I2V/FLF2V) Wan checkpoints are not supported; only text-to-video (T2V) "
            "models load into CausalWanDiT. Image-conditioning keys found:\n" + _format_keys(i2v)
        )


def _convert_diffusers(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Rename diffusers keys; return the renamed dict and the keys that have no counterpart."""
    state_dict = _strip_prefixes(state_dict)
    _check_not_i2v(state_dict)
    out: StateDict = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        if key == "scale_shift_table":
            new_key: str | None = "head.modulation"
        elif match := _BLOCK_KEY.match(key):
            index, rest = match.groups()
            if rest == "scale_shift_table":
                new_key = f"blocks.{index}.modulation"
            else:
                module, _, param = rest.rpartition(".")
                ours = _DIFFUSERS_BLOCK_MODULES.get(module)
                new_key = f"blocks.{index}.{ours}.{param}" if ours else None
        else:
            module, _, param = key.rpartition(".")
            ours = _DIFFUSERS_TOP_MODULES.get(module)
            new_key = f"{ours}.{param}" if ours else None
        if new_key is None:
            unmapped.append(key)
        else:
            out[new_key] = value
    return out, unmapped


def _unmapped_message(unmapped: list[str]) -> str:
    """Explain diffusers keys without a CausalWanDiT counterpart."""
    message = "diffusers keys with no CausalWanDiT counterpart:\n" + _format_keys(sorted(unmapped))
    if any(marker in k for k in unmapped for marker in _FUSED_MARKERS):
        message += (
            "\nfused q/k/v projections were saved; call `unfuse_qkv_projections()` on the diffusers "
            "model before `save_pretrained`"
        )
    return message


def diffusers_to_wan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a diffusers ``WanTransformer3DModel`` state dict to the original Wan names we use.

    The mapping (``N`` is the block index)::

        condition_embedder.time_embedder.linear_1/2   -> time_embedding.0/2
        condition_embedder.time_proj                  -> time_projection.1
        condition_embedder.text_embedder.linear_1/2   -> text_embedding.0/2
        blocks.N.attn1.to_q/to_k/to_v/to_out.0        -> blocks.N.self_attn.q/k/v/o
        blocks.N.attn1.norm_q/norm_k                  -> blocks.N.self_attn.norm_q/norm_k
        blocks.N.attn2.*                              -> blocks.N.cross_attn.* (same renames)
        blocks.N.norm2 (affine cross-attention norm)  -> blocks.N.norm3
        blocks.N.ffn.net.0.proj / ffn.net.2           -> blocks.N.ffn.0 / ffn.2
        blocks.N.scale_shift_table                    -> blocks.N.modulation
        proj_out                                      -> head.head
        scale_shift_table                             -> head.modulation
        patch_embedding                               -> patch_embedding

    Args:
        state_dict: diffusers-named tensors.

    Returns:
        A new dict with original Wan names (the tensors are shared, not copied).

    Raises:
        WanWeightsError: For image-to-video keys, or keys with no counterpart (listed).
    """
    out, unmapped = _convert_diffusers(state_dict)
    if unmapped:
        raise WanWeightsError(_unmapped_message(unmapped))
    return out


def original_to_wan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Prepare an original-format Wan state dict: strip framework prefixes, refuse I2V weights.

    Original Wan checkpoints already use our parameter names; only the prefixes in
    :data:`STRIPPED_PREFIXES` (``model.diffusion_model.``, ``model.``, ``module.``, ``_orig_mod.``,
    repeatedly) are removed.

    Args:
        state_dict: Original-named tensors, possibly prefixed.

    Returns:
        A new dict with bare original names (tensors shared).

    Raises:
        WanWeightsError: For image-to-video keys, or two keys that collapse onto the same name.
    """
    out = _strip_prefixes(state_dict)
    _check_not_i2v(out)
    return out


_DIFFUSERS_KEY_HINTS = ("condition_embedder.", ".attn1.", ".attn2.", "proj_out.", "scale_shift_table")
_ORIGINAL_KEY_HINTS = (
    "time_embedding.",
    "text_embedding.",
    ".self_attn.",
    ".cross_attn.",
    "head.head.",
    "modulation",
)


def detect_format(state_dict: Mapping[str, Any]) -> Literal["diffusers", "original"]:
    """Tell diffusers-named from original-named Wan weights by their keys (prefixes ignored).

    Args:
        state_dict: A state dict (only the keys are read).

    Returns:
        ``"diffusers"`` or ``"original"``.

    Raises:
        WanWeightsError: If the keys look like neither format, or like both at once.
    """
    keys = [_strip_prefix(k) for k in state_dict]
    # The two hint sets are disjoint: no diffusers key holds an original hint, and vice versa.
    diffusers = any(h in "." + k for k in keys for h in _DIFFUSERS_KEY_HINTS)
    original = any(h in "." + k for k in keys for h in _ORIGINAL_KEY_HINTS)
    if diffusers and original:
        raise WanWeightsError(
            "the checkpoint mixes diffusers names (condition_embedder, attn1, proj_out ...) and original "
            "Wan names (time_embedding, self_attn, head.head ...); it is not a single Wan model"
        )
    if diffusers:
        return "diffusers"
    if original:
        return "original"
    raise WanWeightsError(
        "not a Wan2.1 transformer checkpoint: no diffusers (condition_embedder.*, blocks.N.attn1.*) "
        "or original (time_embedding.*, blocks.N.self_attn.*) keys; first keys: "
        f"{keys[:MAX_LISTED_KEYS]}"
    )


# 2. Configs -----------------------------------------------------------------------------------

# WanTransformer3DModel.__init__ defaults, used for keys a diffusers config leaves out (as diffusers does).
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}

# Original ``wan.modules.model.WanModel.__init__`` defaults. The released config.json files hold
# only _class_name, _diffusers_version, dim, eps, ffn_dim, freq_dim, in_dim, model_type, num_heads,
# num_layers, out_dim and text_len: WanModel lists patch_size, cross_attn_norm, qk_norm, text_dim and
# window_size in `ignore_for_config`, so they always take these defaults. The RoPE table is fixed at
# 1024 positions in WanModel; `rope_max_seq_len` is accepted as an sfpp extension.
_ORIGINAL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

#: CausalWanDiT constructor arguments that describe the architecture (what a config.json stores);
#: ``causal``, ``num_frames_per_chunk`` and ``attention_backend`` are chosen when building.
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "patch_size",
    "in_channels",
    "out_channels",
    "dim",
    "ffn_dim",
    "num_layers",
    "num_heads",
    "text_dim",
    "freq_dim",
    "eps",
    "cross_attn_norm",
    "rope_max_seq_len",
    "prediction_type",
)


def _public_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config entries without the ``_``-prefixed bookkeeping (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _reject_unknown(config: Mapping[str, Any], known: Iterable[str], kind: str) -> None:
    """Raise for config keys this loader does not understand (nothing is silently ignored)."""
    unknown = sorted(set(_public_keys(config)) - set(known))
    if unknown:
        raise ValueError(
            f"unsupported keys {unknown} in a {kind} config; CausalWanDiT implements the Wan2.1 "
            f"text-to-video transformer, whose {kind} config keys are {sorted(known)}"
        )


def _patch_size(value: Any) -> tuple[int, int, int]:
    """A patch size as a 3-tuple of ints."""
    patch = tuple(int(p) for p in value)
    if len(patch) != 3:
        raise ValueError(f"patch_size must have 3 entries (t, h, w), got {value!r}")
    return patch  # type: ignore[return-value]


def config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a diffusers ``WanTransformer3DModel`` config into :class:`CausalWanDiT` arguments.

    Keys the config leaves out take the ``WanTransformer3DModel`` defaults, as in diffusers.

    Args:
        config: The parsed ``config.json`` of a diffusers Wan transformer.

    Returns:
        The architecture arguments (:data:`ARCHITECTURE_KEYS`), with ``dim = heads * head_dim``.

    Raises:
        ValueError: For image-to-video settings (``image_dim``, ``added_kv_proj_dim``,
            ``pos_embed_seq_len``), a ``qk_norm`` other than ``rms_norm_across_heads``, another
            ``_class_name`` or unknown keys.
    """
    class_name = config.get("_class_name", DIFFUSERS_CLASS_NAME)
    if class_name != DIFFUSERS_CLASS_NAME:
        raise ValueError(
            f"expected a diffusers {DIFFUSERS_CLASS_NAME} config, got _class_name={class_name!r}"
        )
    _reject_unknown(config, _DIFFUSERS_DEFAULTS, "diffusers WanTransformer3DModel")
    cfg = {**_DIFFUSERS_DEFAULTS, **_public_keys(config)}
    for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
        if cfg[key] is not None:
            raise ValueError(
                f"{key}={cfg[key]!r}: image-to-video Wan models are not supported (only text-to-video); "
                f"{key} must be null"
            )
    if cfg["qk_norm"] != "rms_norm_across_heads":
        raise ValueError(
            f"qk_norm={cfg['qk_norm']!r} is not supported: CausalWanDiT always applies RMSNorm across "
            "heads to queries and keys (qk_norm='rms_norm_across_heads')"
        )
    num_heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
    in_channels = int(cfg["in_channels"])
    return {
        "patch_size": _patch_size(cfg["patch_size"]),
        "in_channels": in_channels,
        # diffusers: `out_channels = out_channels or in_channels`
        "out_channels": int(cfg["out_channels"] or in_channels),
        "dim": num_heads * head_dim,
        "ffn_dim": int(cfg["ffn_dim"]),
        "num_layers": int(cfg["num_layers"]),
        "num_heads": num_heads,
        "text_dim": int(cfg["text_dim"]),
        "freq_dim": int(cfg["freq_dim"]),
        "eps": float(cfg["eps"]),
        "cross_attn_norm": bool(cfg["cross_attn_norm"]),
        "rope_max_seq_len": int(cfg["rope_max_seq_len"]),
    }


def config_from_original(config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an original Wan2.1 ``WanModel`` config into :class:`CausalWanDiT` arguments.

    The released Wan2.1 T2V ``config.json`` files hold ``dim``, ``eps``, ``ffn_dim``, ``freq_dim``,
    ``in_dim``, ``model_type``, ``num_heads``, ``num_layers``, ``out_dim`` and ``text_len``; the
    other ``WanModel`` arguments (``patch_size``, ``text_dim``, ``window_size``, ``qk_norm``,
    ``cross_attn_norm``) are accepted too, and missing keys take the ``WanModel`` defaults.
    ``text_len`` (512) is not an architecture setting: it is the length the original pipeline
    zero-pads prompts to, which the text encoder component reproduces; it is validated and dropped.

    Args:
        config: The parsed ``config.json`` of an original Wan2.1 checkpoint.

    Returns:
        The architecture arguments (:data:`ARCHITECTURE_KEYS`).

    Raises:
        ValueError: For ``model_type`` other than ``t2v``, windowed attention
            (``window_size`` other than ``(-1, -1)``), ``qk_norm`` false, or unknown keys.
    """
    _reject_unknown(config, _ORIGINAL_DEFAULTS, "original Wan2.1 WanModel")
    cfg = {**_ORIGINAL_DEFAULTS, **_public_keys(config)}
    if cfg["model_type"] != "t2v":
        raise ValueError(
            f"model_type={cfg['model_type']!r}: only text-to-video Wan models (model_type 't2v') are "
            "supported; image-to-video checkpoints (i2v, flf2v, ti2v) are not"
        )
    if tuple(cfg["window_size"]) != (-1, -1):
        raise ValueError(
            f"window_size={cfg['window_size']!r}: CausalWanDiT has no local-window attention inside a "
            "frame; window_size must be (-1, -1)"
        )
    if cfg["qk_norm"] is not True:
        raise ValueError(f"qk_norm={cfg['qk_norm']!r}: CausalWanDiT always RMS-normalises queries and keys")
    if int(cfg["text_len"]) <= 0:
        raise ValueError(f"text_len must be positive, got {cfg['text_len']!r}")
    return {
        "patch_size": _patch_size(cfg["patch_size"]),
        "in_channels": int(cfg["in_dim"]),
        "out_channels": int(cfg["out_dim"]),
        "dim": int(cfg["dim"]),
        "ffn_dim": int(cfg["ffn_dim"]),
        "num_layers": int(cfg["num_layers"]),
        "num_heads": int(cfg["num_heads"]),
        "text_dim": int(cfg["text_dim"]),
        "freq_dim": int(cfg["freq_dim"]),
        "eps": float(cfg["eps"]),
        "cross_attn_norm": bool(cfg["cross_attn_norm"]),
        "rope_max_seq_len": int(cfg["rope_max_seq_len"]),
    }


def _config_from_sfpp(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture arguments from a config written by :func:`save_wan_weights`."""
    _reject_unknown(config, ARCHITECTURE_KEYS, SFPP_CLASS_NAME)
    missing = sorted(set(ARCHITECTURE_KEYS) - set(config))
    if missing:
        raise ValueError(f"{SFPP_CLASS_NAME} config is missing {missing}")
    kwargs = {key: config[key] for key in ARCHITECTURE_KEYS}
    kwargs["patch_size"] = _patch_size(kwargs["patch_size"])
    return kwargs


_DIFFUSERS_ONLY_CONFIG_KEYS = ("num_attention_heads", "attention_head_dim", "in_channels")


def read_config(path: PathLike) -> tuple[Literal["sfpp", "diffusers", "original"], dict[str, Any]]:
    """Read a checkpoint's ``config.json`` and turn it into :class:`CausalWanDiT` arguments.

    Args:
        path: The checkpoint directory, or a weight file whose directory holds ``config.json``.

    Returns:
        The config's format and the architecture arguments.

    Raises:
        FileNotFoundError: If there is no ``config.json``.
        ValueError: For configs of unsupported models (see :func:`config_from_diffusers`,
            :func:`config_from_original`).
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        hint = ""
        if (directory / "transformer" / CONFIG_FILE).is_file():
            hint = f"; this looks like a diffusers pipeline, pass {directory / 'transformer'}"
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory} (needed to build the model){hint}")
    with config_path.open() as f:
        config = json.load(f)
    class_name = config.get("_class_name")
    if class_name == SFPP_CLASS_NAME:
        return "sfpp", _config_from_sfpp(config)
    if class_name == DIFFUSERS_CLASS_NAME or any(k in config for k in _DIFFUSERS_ONLY_CONFIG_KEYS):
        return "diffusers", config_from_diffusers(config)
    return "original", config_from_original(config)


# 3. Files -------------------------------------------------------------------------------------

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
        return load_file(str(path), device="cpu")
    if suffix in _TORCH_SUFFIXES:
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True), checkpoint_key, path)
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
                f"weights listed in {indexes[0].name} but absent from its shards:\n{_format_keys(lost)}"
            )
        return merged
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weight files in directory {directory}; expected {_EXPECTED_FILES}")
    return _merge((p, _load_one_file(p)) for p in files)


def load_state_dict_file(path: PathLike, checkpoint_key: str | None = None) -> StateDict:
    """Read a state dict from a weight file or a checkpoint directory, onto the CPU.

    * ``.safetensors``: read with :func:`safetensors.torch.load_file`;
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


# 4. Loading into the model --------------------------------------------------------------------


def _format_keys(keys: list[str], limit: int = MAX_LISTED_KEYS) -> str:
    """Indented list of at most ``limit`` keys, then a count of the rest."""
    lines = [f"    {k}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
    return "\n".join(lines)


def _to_wan_names(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Convert either format to our names; also return diffusers keys left without a counterpart."""
    if detect_format(state_dict) == "diffusers":
        return _convert_diffusers(state_dict)
    return original_to_wan_state_dict(state_dict), []


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
    state_dict, unmapped = _to_wan_names(raw)
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
        problems.append(f"  missing from the checkpoint ({len(missing)}):\n{_format_keys(missing)}")
    if unexpected:
        problems.append(f"  unexpected in the checkpoint ({len(unexpected)}):\n{_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"  shape mismatches ({len(mismatched)}):\n{_format_keys(mismatched)}")
    if mismatched or (problems and strict):
        raise WanWeightsError(
            f"weights from {source} do not fit the model (dim={model.dim}, num_layers={model.num_layers}, "
            f"num_heads={model.num_heads}); check the config matches the checkpoint:\n" + "\n".join(problems)
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
    _, kwargs = read_config(path)
    with _default_dtype(dtype):
        model = CausalWanDiT(
            **kwargs,
            causal=causal,
            num_frames_per_chunk=num_frames_per_chunk,
            attention_backend=attention_backend,
        )
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


# 5. Saving ------------------------------------------------------------------------------------


def architecture_config(model: CausalWanDiT) -> dict[str, Any]:
    """The architecture arguments of a built model, reconstructed from its modules.

    Args:
        model: A :class:`CausalWanDiT`.

    Returns:
        A JSON-serialisable dict with the keys :data:`ARCHITECTURE_KEYS`.
    """
    first = model.blocks[0] if len(model.blocks) else None
    return {
        "patch_size": [int(p) for p in model.patch_size],
        "in_channels": int(model.in_channels),
        "out_channels": int(model.out_channels),
        "dim": int(model.dim),
        "ffn_dim": int(first.ffn[0].out_features) if first is not None else int(model.dim),
        "num_layers": int(model.num_layers),
        "num_heads": int(model.num_heads),
        "text_dim": int(model.text_embedding[0].in_features),
        "freq_dim": int(model.freq_dim),
        "eps": float(model.head.norm.eps),
        "cross_attn_norm": isinstance(first.norm3, nn.LayerNorm) if first is not None else True,
        "rope_max_seq_len": int(model.rope_max_seq_len),
        "prediction_type": str(model.prediction_type),
    }


def save_wan_weights(model: nn.Module, directory: PathLike) -> Path:
    """Write a model as ``model.safetensors`` (original Wan names) plus ``config.json``.

    The config holds the architecture arguments (:func:`architecture_config`) under
    ``"_class_name": "CausalWanDiT"``, so :func:`build_from_pretrained` rebuilds the same model;
    ``causal`` / ``num_frames_per_chunk`` / ``attention_backend`` are chosen again when building.
    The weights keep their dtype; the weights file also loads in tools that read original Wan names.

    Args:
        model: A :class:`CausalWanDiT` (a ``torch.compile`` wrapper around one is unwrapped).
        directory: Created if needed; existing files of the same names are overwritten.

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
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in _strip_prefixes(model.state_dict()).items()}
    save_file(
        tensors, str(directory / SFPP_WEIGHTS_FILE), metadata={"format": "pt", "layout": "wan2.1-original"}
    )
    config = {"_class_name": SFPP_CLASS_NAME, **architecture_config(model)}
    with (directory / CONFIG_FILE).open("w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    num_params = sum(math.prod(t.shape) for t in tensors.values())
    log.info("saved %d tensors (%d parameters) to %s", len(tensors), num_params, directory)
    return directory
