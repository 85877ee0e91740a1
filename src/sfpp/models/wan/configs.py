"""Checkpoint configs into a :class:`~sfpp.models.config.CausalWanConfig`: diffusers, original Wan, sfpp.

* **original** Wan2.1 and Wan2.2 (``Wan-AI/Wan2.1-T2V-*``, ``Wan-AI/Wan2.2-TI2V-5B``): a
  ``config.json`` with ``WanModel`` keys (``dim``, ``in_dim``, ``num_heads``, ``model_type`` ...);
* **diffusers** (``Wan-AI/Wan2.1-T2V-*-Diffusers/transformer``,
  ``Wan-AI/Wan2.2-TI2V-5B-Diffusers/transformer``): a ``WanTransformer3DModel`` config;
* **sfpp**, written by :func:`~sfpp.models.wan.files.save_wan_weights`: the config's architecture
  fields under ``"_class_name": "CausalWanDiT"``.

Nothing is silently ignored: unknown keys and image-to-video settings raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from sfpp.models.config import ARCHITECTURE_FIELDS, CausalWanConfig

__all__ = [
    "CONFIG_FILE",
    "DIFFUSERS_CLASS_NAME",
    "SFPP_CLASS_NAME",
    "config_from_diffusers",
    "config_from_original",
    "config_from_sfpp",
    "read_config",
    "sfpp_config_json",
]

PathLike = str | os.PathLike
CONFIG_FILE = "config.json"
SFPP_CLASS_NAME = "CausalWanDiT"
DIFFUSERS_CLASS_NAME = "WanTransformer3DModel"

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


def config_from_diffusers(config: Mapping[str, Any]) -> CausalWanConfig:
    """Turn a diffusers ``WanTransformer3DModel`` config into a :class:`~sfpp.models.config.CausalWanConfig`.

    Keys the config leaves out take the ``WanTransformer3DModel`` defaults, as in diffusers.

    Args:
        config: The parsed ``config.json`` of a diffusers Wan transformer.

    Returns:
        The architecture (build options at their defaults), with ``dim = heads * head_dim``.

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
    return CausalWanConfig(
        **{
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
    )


#: Original ``model_type`` values whose ``WanModel`` is the text-to-video architecture: Wan2.1's and
#: Wan2.2's ``t2v`` and Wan2.2's ``ti2v`` (TI2V-5B: the same blocks on 48-channel latents; an image
#: enters as a clean first latent frame at timestep 0, not through extra weights).
TEXT_TO_VIDEO_MODEL_TYPES = ("t2v", "ti2v")


def config_from_original(config: Mapping[str, Any]) -> CausalWanConfig:
    """Turn an original Wan2.1 / Wan2.2 ``WanModel`` config into a :class:`~sfpp.models.config.CausalWanConfig`.

    The released T2V and TI2V ``config.json`` files hold ``dim``, ``eps``, ``ffn_dim``, ``freq_dim``,
    ``in_dim``, ``model_type``, ``num_heads``, ``num_layers``, ``out_dim`` and ``text_len``; the
    other ``WanModel`` arguments (``patch_size``, ``text_dim``, ``window_size``, ``qk_norm``,
    ``cross_attn_norm``) are accepted too, and missing keys take the ``WanModel`` defaults.
    ``text_len`` (512) is not an architecture setting: it is the length the original pipeline
    zero-pads prompts to, which the text encoder component reproduces; it is validated and dropped.

    Args:
        config: The parsed ``config.json`` of an original Wan2.1 or Wan2.2 checkpoint.

    Returns:
        The architecture (build options at their defaults).

    Raises:
        ValueError: For ``model_type`` other than ``t2v`` or ``ti2v``, windowed attention
            (``window_size`` other than ``(-1, -1)``), ``qk_norm`` false, or unknown keys.
    """
    _reject_unknown(config, _ORIGINAL_DEFAULTS, "original Wan WanModel")
    cfg = {**_ORIGINAL_DEFAULTS, **_public_keys(config)}
    if cfg["model_type"] not in TEXT_TO_VIDEO_MODEL_TYPES:
        raise ValueError(
            f"model_type={cfg['model_type']!r}: supported are Wan's text-to-video architecture "
            f"(model_type {' or '.join(repr(t) for t in TEXT_TO_VIDEO_MODEL_TYPES)}: Wan2.1/Wan2.2 T2V and "
            "Wan2.2-TI2V-5B); image-to-video models with image channels or a CLIP encoder (i2v, flf2v, s2v) "
            "are not"
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
    return CausalWanConfig(
        **{
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
    )


def config_from_sfpp(config: Mapping[str, Any]) -> CausalWanConfig:
    """The config written by :func:`~sfpp.models.wan.files.save_wan_weights` (every architecture field).

    Raises:
        ValueError: For unknown or missing fields.
    """
    _reject_unknown(config, ARCHITECTURE_FIELDS, SFPP_CLASS_NAME)
    missing = sorted(set(ARCHITECTURE_FIELDS) - set(config))
    if missing:
        raise ValueError(f"{SFPP_CLASS_NAME} config is missing {missing}")
    return CausalWanConfig(**{key: config[key] for key in ARCHITECTURE_FIELDS})


_DIFFUSERS_ONLY_CONFIG_KEYS = ("num_attention_heads", "attention_head_dim", "in_channels")


def read_config(path: PathLike) -> tuple[Literal["sfpp", "diffusers", "original"], CausalWanConfig]:
    """Read a checkpoint's ``config.json`` as a :class:`~sfpp.models.config.CausalWanConfig`.

    Args:
        path: The checkpoint directory, or a weight file whose directory holds ``config.json``.

    Returns:
        The config's format and the architecture (build options at their defaults).

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
        return "sfpp", config_from_sfpp(config)
    if class_name == DIFFUSERS_CLASS_NAME or any(k in config for k in _DIFFUSERS_ONLY_CONFIG_KEYS):
        return "diffusers", config_from_diffusers(config)
    return "original", config_from_original(config)


def sfpp_config_json(config: CausalWanConfig) -> dict[str, Any]:
    """The ``config.json`` content of an sfpp checkpoint: the architecture under its class name."""
    return {"_class_name": SFPP_CLASS_NAME, **config.architecture()}
