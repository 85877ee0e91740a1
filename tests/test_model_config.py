"""CausalWanConfig: one object that flavours, both Wan formats, saving and loading produce or consume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from sfpp.models import FLAVOURS, CausalWanConfig, CausalWanDiT, build_model
from sfpp.models.config import ARCHITECTURE_FIELDS, BUILD_FIELDS
from sfpp.models.wan import (
    build_from_pretrained,
    config_from_diffusers,
    config_from_original,
    read_config,
    save_wan_weights,
)
from test_wan_weights import TINY_DIFFUSERS


def _tiny(**changes) -> CausalWanConfig:
    return FLAVOURS["tiny"].replace(attention_backend="sdpa", **changes)


def test_fields_split_into_architecture_and_build_options() -> None:
    assert set(ARCHITECTURE_FIELDS) | set(BUILD_FIELDS) == set(CausalWanConfig().to_dict())
    assert not set(ARCHITECTURE_FIELDS) & set(BUILD_FIELDS)
    assert set(BUILD_FIELDS) == {"causal", "num_frames_per_chunk", "attention_backend", "min_sigma"}
    assert "causal" not in CausalWanConfig().architecture()


def test_the_model_keeps_its_config_and_reads_its_settings_there() -> None:
    config = _tiny(causal=True, num_frames_per_chunk=2)
    model = CausalWanDiT(config)
    assert model.config == config
    assert (model.config.dim, model.config.num_layers, model.config.causal) == (32, 2, True)
    assert model.config.head_dim == 16
    # one source of truth: no field is copied onto the model
    assert not any(hasattr(model, name) for name in ("dim", "num_layers", "causal", "num_frames_per_chunk"))
    assert [block.layer for block in model.blocks] == [0, 1]
    assert model.default_pattern.num_frames_per_chunk == 2
    assert build_model("tiny", causal=True, num_frames_per_chunk=2, attention_backend="sdpa").config == config
    assert CausalWanDiT(**config.to_dict()).config == config  # the keyword form Hydra configs use
    assert CausalWanDiT(config, num_layers=1).config == config.replace(num_layers=1)


def test_every_flavour_is_a_config_that_builds() -> None:
    for name, config in FLAVOURS.items():
        assert isinstance(config, CausalWanConfig), name
        with torch.device("meta"):
            assert CausalWanDiT(config).config == config


def test_json_round_trip_and_patch_size_normalised() -> None:
    config = _tiny(patch_size=[1, 2, 2], prediction_type="x0", causal=True)
    assert config.patch_size == (1, 2, 2)
    assert CausalWanConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_layerz": 2}, "unknown CausalWanDiT arguments"),
        ({"prediction_type": "eps"}, "prediction_type"),
        ({"prediction_type": "x0", "out_channels": 8}, "out_channels == in_channels"),
        ({"patch_size": (2, 2, 2)}, "one frame"),
        ({"num_heads": 3}, "divisible"),
    ],
)
def test_invalid_configs_are_refused(changes, match) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny(**changes)


def test_with_build_refuses_architecture_fields() -> None:
    with pytest.raises(ValueError, match="not build options"):
        _tiny().with_build(dim=64)
    assert _tiny().with_build(causal=True).causal


@pytest.mark.parametrize("prediction_type", ["flow", "x0"])
def test_config_round_trips_through_save_and_load(tmp_path: Path, prediction_type: str) -> None:
    torch.manual_seed(0)
    model = CausalWanDiT(_tiny(prediction_type=prediction_type, rope_max_seq_len=64, eps=1e-5))
    save_wan_weights(model, tmp_path)
    fmt, config = read_config(tmp_path)
    assert fmt == "sfpp"
    assert config == model.config.replace(attention_backend="auto")  # build options come from the call
    loaded = build_from_pretrained(tmp_path, attention_backend="sdpa")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_large_models_are_saved_as_shards_that_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CausalWanDiT(_tiny())
    save_wan_weights(model, tmp_path, max_shard_size=20_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = build_from_pretrained(tmp_path, attention_backend="sdpa")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_both_wan_formats_give_the_config_of_the_same_model(tmp_path: Path) -> None:
    diffusers_config = {"_class_name": "WanTransformer3DModel", **TINY_DIFFUSERS, "eps": 1e-6}
    original_config = dict(
        _class_name="WanModel",
        model_type="t2v",
        dim=32,
        ffn_dim=64,
        freq_dim=32,
        in_dim=4,
        out_dim=4,
        num_heads=2,
        num_layers=2,
        text_dim=16,
        eps=1e-6,
    )
    expected = FLAVOURS["tiny"]
    assert config_from_diffusers(diffusers_config) == expected
    assert config_from_original(original_config) == expected
    # The diffusers model of that config and ours have the same parameter count.
    public = {k: v for k, v in diffusers_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        theirs = sum(p.numel() for p in WanTransformer3DModel(**public).parameters())
        ours = sum(p.numel() for p in CausalWanDiT(expected).parameters())
    assert ours == theirs
    for name, config in (("diffusers", diffusers_config), ("original", original_config)):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
        assert read_config(directory) == (name, expected)
