"""Weight names of Wan2.1 checkpoints: the diffusers-to-original key map, prefixes, format detection.

:class:`~sfpp.models.causal_wan.CausalWanDiT` uses the original Wan2.1 parameter names
(``blocks.N.self_attn.q``, ``head.modulation`` ...); diffusers checkpoints are renamed onto them by
:func:`diffusers_to_wan_state_dict`. Only text-to-video models are supported: image-to-video weights
raise :class:`WanWeightsError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch

__all__ = [
    "MAX_LISTED_KEYS",
    "STRIPPED_PREFIXES",
    "StateDict",
    "WanWeightsError",
    "detect_format",
    "diffusers_to_wan_state_dict",
    "format_keys",
    "original_to_wan_state_dict",
    "strip_prefixes",
    "to_wan_names",
]

StateDict = dict[str, torch.Tensor]

#: Prefixes that training frameworks put in front of the model's own names; stripped on load.
STRIPPED_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "model.", "module.", "_orig_mod.")
#: Names shown per category in an error message before "... and N more".
MAX_LISTED_KEYS = 20


class WanWeightsError(ValueError):
    """A checkpoint that does not fit the model: missing, unexpected or mis-shaped weights."""


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


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
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
            "models load into CausalWanDiT. Image-conditioning keys found:\n" + format_keys(i2v)
        )


def _convert_diffusers(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Rename diffusers keys; return the renamed dict and the keys that have no counterpart."""
    state_dict = strip_prefixes(state_dict)
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
    message = "diffusers keys with no CausalWanDiT counterpart:\n" + format_keys(sorted(unmapped))
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
    out = strip_prefixes(state_dict)
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


def format_keys(keys: list[str], limit: int = MAX_LISTED_KEYS) -> str:
    """Indented list of at most ``limit`` keys, then a count of the rest."""
    lines = [f"    {k}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
    return "\n".join(lines)


def to_wan_names(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Convert either format to our names; also return diffusers keys left without a counterpart."""
    if detect_format(state_dict) == "diffusers":
        return _convert_diffusers(state_dict)
    return original_to_wan_state_dict(state_dict), []
