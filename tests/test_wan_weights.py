"""Wan checkpoint loading: parity with diffusers, original names, errors, round trips, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from sfpp.models import FLAVOURS, CausalWanDiT
from sfpp.models.wan import (
    WanWeightsError,
    build_from_pretrained,
    config_from_diffusers,
    config_from_original,
    detect_format,
    diffusers_to_wan_state_dict,
    load_state_dict_file,
    load_wan_weights,
    original_to_wan_state_dict,
    save_wan_weights,
)

TOL = 1e-5
TINY_DIFFUSERS = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    rope_max_seq_len=1024,
)
TINY_OURS = dict(
    patch_size=(1, 2, 2), in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_layers=2, num_heads=2,
    text_dim=16, freq_dim=32, eps=1e-6, cross_attn_norm=True, rope_max_seq_len=1024,
)  # fmt: skip
# The diffusers config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (transformer/config.json).
WAN_1_3B_DIFFUSERS_CONFIG = {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": "0.33.0.dev0",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
# The config.json of Wan-AI/Wan2.1-T2V-1.3B (original format).
WAN_1_3B_ORIGINAL_CONFIG = {
    "_class_name": "WanModel",
    "_diffusers_version": "0.30.0",
    "dim": 1536,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "in_dim": 16,
    "model_type": "t2v",
    "num_heads": 12,
    "num_layers": 30,
    "out_dim": 16,
    "text_len": 512,
}


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Seeded normal re-initialisation of every parameter: no zero biases, no unit norm weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "scale_shift_table" not in name and "modulation" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 5, 8, 8, generator=g)  # (B, C, F, H, W)
    t = torch.rand(2, generator=g) * 1000  # (B,)
    context = torch.randn(2, 7, 16, generator=g)  # (B, L_text, text_dim)
    return x, t, context


@pytest.fixture(scope="module")
def reference() -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_DIFFUSERS).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def diffusers_dir(reference, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diffusers")
    reference.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ours(diffusers_dir) -> CausalWanDiT:
    return build_from_pretrained(diffusers_dir, attention_backend="sdpa").eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# 1. Parity with diffusers ---------------------------------------------------------------------


@torch.no_grad()
def test_randomisation_leaves_nothing_trivial(reference):
    for name, p in reference.named_parameters():
        assert not torch.all(p == 0), name
        assert not torch.all(p == 1), name


@torch.no_grad()
def test_diffusers_checkpoint_matches_diffusers_outputs(reference, diffusers_dir, ours):
    assert sorted(p.name for p in diffusers_dir.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert not ours.config.causal
    x, t, c = _inputs()
    expected = reference(x, t, c).sample
    assert expected.abs().max() > 1  # outputs are O(1), so the tolerance below is meaningful
    assert _max_diff(ours(x, t, c), expected) <= TOL
    # A per-frame timestep tensor whose frames share the step equals diffusers' (B,) call.
    assert _max_diff(ours(x, t[:, None].expand(2, 5), c), expected) <= TOL


@torch.no_grad()
def test_distinct_per_frame_timesteps_match_diffusers_per_token_timesteps(reference, ours):
    x, _, c = _inputs()
    t_frames = torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) * 1000  # (B, F)
    t_tokens = t_frames[:, :, None].expand(2, 5, 16).reshape(2, -1)  # (B, F * tokens_per_frame)
    assert _max_diff(ours(x, t_frames, c), reference(x, t_tokens, c).sample) <= TOL


def test_converted_names_are_exactly_the_model_names(reference, ours):
    converted = diffusers_to_wan_state_dict(reference.state_dict())
    expected = ours.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert torch.equal(converted["blocks.1.norm3.weight"], reference.blocks[1].norm2.weight)
    assert torch.equal(converted["head.modulation"], reference.scale_shift_table)


# 2. Original names ----------------------------------------------------------------------------


@torch.no_grad()
def test_original_checkpoints_single_file_and_sharded(ours, tmp_path):
    prefixed = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    single = tmp_path / "wan.safetensors"
    save_file(prefixed, str(single))
    assert detect_format(load_state_dict_file(single)) == "original"

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(prefixed)
    shards = {"shard-00001-of-00002.safetensors": keys[::2], "shard-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: prefixed[k] for k in shard_keys}, str(sharded / name))
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )

    x, t, c = _inputs()
    expected = ours(x, t, c)
    for source in (single, sharded):
        model = CausalWanDiT(**TINY_OURS, attention_backend="sdpa").eval()
        load_wan_weights(model, source)
        assert torch.equal(model(x, t, c), expected)


def test_original_prefixes_are_stripped():
    w = torch.zeros(1)
    sd = {
        "model.diffusion_model.head.head.weight": w,
        "module.blocks.0.modulation": w,
        "model.patch_embedding.bias": w,
    }
    assert sorted(original_to_wan_state_dict(sd)) == [
        "blocks.0.modulation",
        "head.head.weight",
        "patch_embedding.bias",
    ]


@torch.no_grad()
def test_our_names_are_the_original_wan_names(ours):
    # diffusers' own original -> diffusers converter accepts our state dict unchanged ...
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in ours.state_dict().items()})
    torch.manual_seed(5)
    twin = WanTransformer3DModel(**TINY_DIFFUSERS).eval()
    twin.load_state_dict(converted, strict=True)
    # ... and the diffusers model built from it computes what we compute.
    x, t, c = _inputs(seed=4)
    assert _max_diff(twin(x, t, c).sample, ours(x, t, c)) <= TOL


# 3. Errors ------------------------------------------------------------------------------------


def _fresh() -> CausalWanDiT:
    return CausalWanDiT(**TINY_OURS, attention_backend="sdpa")


def test_missing_key_is_named(ours):
    sd = ours.state_dict()
    del sd["blocks.1.cross_attn.norm_k.weight"]
    with pytest.raises(
        WanWeightsError, match=r"missing from the checkpoint \(1\)[\s\S]*blocks.1.cross_attn.norm_k.weight"
    ):
        load_wan_weights(_fresh(), sd)


def test_unexpected_key_is_named(ours):
    sd = {**ours.state_dict(), "blocks.0.self_attn.extra.weight": torch.zeros(3)}
    with pytest.raises(
        WanWeightsError, match=r"unexpected in the checkpoint \(1\)[\s\S]*blocks.0.self_attn.extra"
    ):
        load_wan_weights(_fresh(), sd)
    # strict=False tolerates it (and logs a warning); shapes are still checked.
    load_wan_weights(_fresh(), sd, strict=False)


def test_unmapped_diffusers_key_is_named(reference):
    sd = {**reference.state_dict(), "blocks.0.attn1.to_qkv.weight": torch.zeros(96, 32)}
    with pytest.raises(WanWeightsError, match=r"to_qkv[\s\S]*unfuse_qkv_projections"):
        diffusers_to_wan_state_dict(sd)
    with pytest.raises(
        WanWeightsError, match=r"unexpected in the checkpoint \(1\)[\s\S]*attn1.to_qkv.weight"
    ):
        load_wan_weights(_fresh(), sd)


def test_mis_shaped_key_names_both_shapes(ours):
    sd = {**ours.state_dict(), "head.modulation": torch.zeros(1, 3, 32)}
    with pytest.raises(
        WanWeightsError, match=r"head.modulation: checkpoint \(1, 3, 32\) vs model \(1, 2, 32\)"
    ):
        load_wan_weights(_fresh(), sd, strict=False)


def test_long_error_lists_are_truncated(ours):
    with pytest.raises(WanWeightsError) as info:
        load_wan_weights(_fresh(), {"head.head.weight": ours.state_dict()["head.head.weight"]})
    message = str(info.value)
    total = len(ours.state_dict()) - 1
    assert f"missing from the checkpoint ({total})" in message
    assert f"... and {total - 20} more" in message


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        build_from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_state_dict_file(tmp_path / "does-not-exist")


def test_directory_without_weights_names_the_expected_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(WAN_1_3B_ORIGINAL_CONFIG))
    torch.save({"not": torch.zeros(1)}, tmp_path / "Wan2.1_VAE.pth")  # other components are not read
    with pytest.raises(
        FileNotFoundError, match=r"no weight files in directory .*diffusion_pytorch_model\.safetensors"
    ):
        load_state_dict_file(tmp_path)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    save_file({"patch_embedding.bias": torch.zeros(32)}, str(no_config / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no config.json in .*no_config"):
        build_from_pretrained(no_config)


@pytest.mark.parametrize(
    ("key", "naming"),
    [
        ("blocks.0.attn2.add_k_proj.weight", "diffusers"),
        ("condition_embedder.image_embedder.norm1.weight", "diffusers"),
        ("blocks.0.cross_attn.k_img.weight", "original"),
        ("model.diffusion_model.img_emb.proj.1.weight", "original"),
    ],
)
def test_image_to_video_keys_are_refused(reference, key, naming):
    base = reference.state_dict()
    if naming == "original":
        base = diffusers_to_wan_state_dict(base)
    with pytest.raises(WanWeightsError, match="image-to-video .* not supported"):
        load_wan_weights(_fresh(), {**base, key: torch.zeros(32, 32)})


def test_unrecognisable_state_dict():
    with pytest.raises(WanWeightsError, match="not a Wan2.1 transformer checkpoint"):
        detect_format({"encoder.layer.0.weight": torch.zeros(1)})


def test_nested_torch_checkpoint(ours, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"generator_ema": ours.state_dict(), "critic": {"w": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(ValueError, match="checkpoint_key"):
        load_state_dict_file(path)
    model = load_wan_weights(_fresh(), path, checkpoint_key="generator_ema")
    assert torch.equal(model.head.modulation, ours.head.modulation)
    torch.save({"state_dict": ours.state_dict()}, path)
    assert sorted(load_state_dict_file(path)) == sorted(ours.state_dict())


# 4. Saving ------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_and_build_round_trip(ours, tmp_path):
    save_wan_weights(ours, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["_class_name"] == "CausalWanDiT"
    assert {k: v for k, v in config.items() if k != "_class_name"} == {
        **TINY_OURS,
        "patch_size": [1, 2, 2],
        "prediction_type": "flow",
    }
    rebuilt = build_from_pretrained(tmp_path / "saved", attention_backend="sdpa").eval()
    x, t, c = _inputs()
    assert torch.equal(rebuilt(x, t, c), ours(x, t, c))
    # The block-causal student loads the same weights.
    student = build_from_pretrained(
        tmp_path / "saved", causal=True, num_frames_per_chunk=2, attention_backend="sdpa"
    )
    assert student.config.causal and student.config.num_frames_per_chunk == 2
    assert torch.equal(student.blocks[0].ffn[0].weight, ours.blocks[0].ffn[0].weight)


def test_build_in_bfloat16(diffusers_dir, ours):
    model = build_from_pretrained(diffusers_dir, dtype=torch.bfloat16, attention_backend="sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope.cos_t.dtype == torch.float32
    assert torch.equal(model.head.head.weight, ours.head.head.weight.to(torch.bfloat16))
    assert torch.get_default_dtype() == torch.float32


# 5. Configs -----------------------------------------------------------------------------------


def test_wan_1_3b_diffusers_config_is_the_registered_flavour():
    config = config_from_diffusers(WAN_1_3B_DIFFUSERS_CONFIG)
    assert config == FLAVOURS["wan_1_3b"]
    assert config_from_original(WAN_1_3B_ORIGINAL_CONFIG) == config

    public = {k: v for k, v in WAN_1_3B_DIFFUSERS_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        ours = CausalWanDiT(config)
        theirs = WanTransformer3DModel(**public)
    num_ours = sum(p.numel() for p in ours.parameters())
    assert num_ours == sum(p.numel() for p in theirs.parameters()) == 1_418_996_800


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_dim": 1280}, "image-to-video"),
        ({"added_kv_proj_dim": 5120}, "image-to-video"),
        ({"qk_norm": "rms_norm"}, "rms_norm_across_heads"),
        ({"qk_norm": None}, "rms_norm_across_heads"),
        ({"vace_layers": [0, 5]}, "unsupported keys"),
        ({"_class_name": "WanVACETransformer3DModel"}, "WanTransformer3DModel"),
    ],
)
def test_unsupported_diffusers_configs(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_diffusers({**WAN_1_3B_DIFFUSERS_CONFIG, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "i2v"}, "text-to-video"),
        ({"window_size": [128, 128]}, "window_size"),
        ({"qk_norm": False}, "qk_norm"),
        ({"local_attn_size": 21}, "unsupported keys"),
    ],
)
def test_unsupported_original_configs(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_original({**WAN_1_3B_ORIGINAL_CONFIG, **change})


def test_original_directory_builds(ours, tmp_path):
    config = {**WAN_1_3B_ORIGINAL_CONFIG, "dim": 32, "ffn_dim": 64, "freq_dim": 32, "in_dim": 4, "out_dim": 4,
              "num_heads": 2, "num_layers": 2, "text_dim": 16}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(ours.state_dict(), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    model = build_from_pretrained(tmp_path, attention_backend="sdpa").eval()
    x, t, c = _inputs()
    assert torch.equal(model(x, t, c), ours(x, t, c))
