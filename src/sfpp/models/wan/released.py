"""Students released by Self-Forcing, CausVid and LongLive, read into :class:`CausalWanDiT`.

Their checkpoints are torch files holding one state dict per network, under entries such as
``generator``, ``generator_ema`` and ``critic`` (Self-Forcing, CausVid, LongLive) or ``model``, with
keys in the original Wan names behind a ``model.`` prefix (their wrapper's attribute) and sometimes
FSDP's ``_fsdp_wrapped_module.``. LongLive trains LoRA adapters on top of a base student and ships
them apart: a file with ``generator_lora`` (and ``critic_lora``) entries, or the generator's adapter
state dict alone, in peft's naming (``base_model.model.<layer>.lora_A.weight``).

:func:`read_released_state` picks an entry, strips the prefixes and, with an adapter file, merges
``W + (alpha / rank) B A`` into every adapted layer, so the result is a plain model's state dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from sfpp.models.wan.keys import StateDict, WanWeightsError, format_keys, to_wan_names

__all__ = ["RELEASED_ENTRIES", "merge_lora_adapters", "read_released_state", "released_entries"]

PathLike = str | os.PathLike
Role = Literal["student", "critic"]

#: The entries a released checkpoint may hold for each network, in order of preference.
RELEASED_ENTRIES: dict[str, tuple[str, ...]] = {
    "student": ("generator_ema", "generator", "model"),
    "critic": ("critic", "fake_score"),
}
_LORA_ENTRIES: dict[str, str] = {"student": "generator_lora", "critic": "critic_lora"}
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "base_model.model.")
_LORA_KEY = ".lora_"


def _load(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def released_entries(payload: Mapping[str, Any]) -> list[str]:
    """The top-level entries of a loaded checkpoint that hold a state dict."""
    return sorted(k for k, v in payload.items() if _is_state_dict(v))


def _without_wrappers(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop FSDP's and peft's wrapper components from every key (anywhere in it)."""
    out: StateDict = {}
    for key, value in state.items():
        for wrapper in _WRAPPER_PREFIXES:
            key = key.replace(wrapper, "")
        out[key] = value
    return out


def merge_lora_adapters(
    state: Mapping[str, torch.Tensor], adapters: Mapping[str, torch.Tensor], alpha: float | None = None
) -> StateDict:
    """Fold peft-style adapters into a plain state dict: ``W + (alpha / rank) * B @ A`` per layer.

    Args:
        state: The base model's state dict, bare Wan names (``blocks.0.self_attn.q.weight``).
        adapters: ``<layer>.lora_A.weight`` ``(rank, in)`` and ``<layer>.lora_B.weight`` ``(out, rank)``
            per adapted layer, wrapper prefixes already stripped (peft's adapter name, if present,
            is ignored).
        alpha: The adapters' ``lora_alpha``; ``None`` takes the rank (scaling 1, LongLive's configs).

    Returns:
        A new state dict with every adapted weight merged (float32 arithmetic, the base's dtype).

    Raises:
        WanWeightsError: For an adapter whose layer is not in ``state``, a layer with only one of
            its two matrices, shapes that do not multiply to the weight's, or keys that are not
            adapters.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    strays = []
    for key, value in adapters.items():
        if _LORA_KEY not in key:
            strays.append(key)
            continue
        layer, rest = key.split(_LORA_KEY, 1)  # "blocks.0.self_attn.q", "A.weight" / "A.default.weight"
        kind = rest.split(".", 1)[0]
        if kind not in ("A", "B") or not rest.endswith("weight"):
            strays.append(key)
            continue
        pairs.setdefault(layer, {})[kind] = value
    if strays:
        raise WanWeightsError(
            "entries of the adapter file that are not LoRA matrices:\n" + format_keys(sorted(strays))
        )
    merged = dict(state)
    for layer, matrices in sorted(pairs.items()):
        weight_key = f"{layer}.weight"
        if weight_key not in merged:
            raise WanWeightsError(f"an adapter for {layer!r}, which the base checkpoint does not have")
        if set(matrices) != {"A", "B"}:
            raise WanWeightsError(f"the adapter of {layer!r} has only lora_{''.join(matrices)}")
        a, b, weight = matrices["A"].float(), matrices["B"].float(), merged[weight_key]  # (r, in), (out, r)
        if (b.shape[0], a.shape[1]) != tuple(weight.shape) or a.shape[0] != b.shape[1]:
            raise WanWeightsError(
                f"the adapter of {layer!r} ({tuple(b.shape)} @ {tuple(a.shape)}) does not fit its weight "
                f"{tuple(weight.shape)}"
            )
        scaling = (a.shape[0] if alpha is None else alpha) / a.shape[0]
        merged[weight_key] = (weight.float() + scaling * (b @ a)).to(weight.dtype)  # (out, in)
    return merged


def read_released_state(
    path: PathLike,
    role: Role = "student",
    entry: str | None = None,
    lora: PathLike | None = None,
    lora_alpha: float | None = None,
    payload: Any = None,
) -> tuple[StateDict, str]:
    """The bare Wan state dict of one network of a released checkpoint.

    Args:
        path: A torch file in a Self-Forcing, CausVid or LongLive layout, or a flat state dict.
        role: ``student`` (the generator: ``generator_ema``, else ``generator``, else ``model``) or
            ``critic`` (``critic``, else ``fake_score``).
        entry: The entry to read, instead of the first of the role's that the file holds.
        lora: Optional LongLive adapter file merged into the weights (its ``generator_lora`` or
            ``critic_lora`` entry by ``role``, or the whole file when it is a flat adapter dict).
        lora_alpha: The adapters' ``lora_alpha`` (``None``: their rank).
        payload: ``path``'s content when the caller has loaded it already (read once, not twice).

    Returns:
        ``(state dict with sfpp's names, the entry read)``; the entry is ``""`` for a flat file.

    Raises:
        FileNotFoundError: A missing file.
        WanWeightsError: No entry of the role (the message names the entries found), an unknown
            ``entry``, or weights that are not a Wan2.1 transformer.
    """
    if payload is None:
        payload = _load(path)
    if not isinstance(payload, Mapping):
        raise WanWeightsError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    found = released_entries(payload)
    if _is_state_dict(payload):
        chosen, state = "", payload
    else:
        candidates = [entry] if entry is not None else [e for e in RELEASED_ENTRIES[role] if e in found]
        if not candidates or candidates[0] not in found:
            wanted = f"entry {entry!r}" if entry is not None else f"one of {list(RELEASED_ENTRIES[role])}"
            raise WanWeightsError(
                f"{path} has no {role} weights: looked for {wanted}; the entries holding weights are "
                f"{found or 'none'} (top-level keys: {sorted(map(str, payload))}). Pick one with the "
                "entry setting, or pass a Lightning checkpoint of sfpp"
            )
        chosen = candidates[0]
        state = payload[chosen]
    bare, unmapped = to_wan_names(_without_wrappers(state))
    if unmapped:
        raise WanWeightsError(
            f"weights of {path} [{chosen}] with no Wan counterpart:\n" + format_keys(unmapped)
        )
    if lora is not None:
        adapters = _load(lora)
        key = _LORA_ENTRIES[role]
        if isinstance(adapters, Mapping) and key in adapters:
            adapters = adapters[key]
        elif not _is_state_dict(adapters) or not any(_LORA_KEY in k for k in adapters):
            entries = released_entries(adapters) if isinstance(adapters, Mapping) else []
            raise WanWeightsError(
                f"{lora} holds no {role} adapters: no {key!r} entry and not a flat adapter dict "
                f"(entries holding weights: {entries or 'none'})"
            )
        bare = merge_lora_adapters(bare, _strip_model_prefix(_without_wrappers(adapters)), lora_alpha)
    return bare, chosen


def _strip_model_prefix(adapters: Mapping[str, torch.Tensor]) -> StateDict:
    """Adapter keys relative to the transformer (a ``model.`` in front is the wrapper's attribute)."""
    return {k[len("model.") :] if k.startswith("model.") else k: v for k, v in adapters.items()}
