"""Wan2.1 checkpoints (diffusers or original format) into :class:`~sfpp.models.causal_wan.CausalWanDiT`.

Split by concern: :mod:`~sfpp.models.wan.keys` (weight names), :mod:`~sfpp.models.wan.configs`
(``config.json`` of each format into a :class:`~sfpp.models.config.CausalWanConfig`),
:mod:`~sfpp.models.wan.files` (reading and writing weight files) and
:mod:`~sfpp.models.wan.loading` (filling a model, building one from a directory) and
:mod:`~sfpp.models.wan.released` (students released by Self-Forcing, CausVid, LongLive). Weights only ever
come from local disk.
"""

from sfpp.models.wan.configs import config_from_diffusers, config_from_original, config_from_sfpp, read_config
from sfpp.models.wan.files import load_state_dict_file, save_wan_weights
from sfpp.models.wan.keys import (
    STRIPPED_PREFIXES,
    WanWeightsError,
    detect_format,
    diffusers_to_wan_state_dict,
    original_to_wan_state_dict,
)
from sfpp.models.wan.loading import build_from_pretrained, load_wan_weights
from sfpp.models.wan.released import merge_lora_adapters, read_released_state

__all__ = [
    "STRIPPED_PREFIXES",
    "WanWeightsError",
    "build_from_pretrained",
    "config_from_diffusers",
    "config_from_original",
    "config_from_sfpp",
    "detect_format",
    "diffusers_to_wan_state_dict",
    "load_state_dict_file",
    "load_wan_weights",
    "merge_lora_adapters",
    "original_to_wan_state_dict",
    "read_config",
    "read_released_state",
    "save_wan_weights",
]
