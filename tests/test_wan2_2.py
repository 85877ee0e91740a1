"""Wan2.2-TI2V-5B behind the same components: the transformer against diffusers, both weight layouts,
the Wan2.2 VAE as a codec, TI2V's first-frame conditioning, the 5B experiments and their plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file

from sfpp.apps.gpu_shapes import SHAPES
from sfpp.codecs import WanVAECodec
from sfpp.diffusion.reencode import WindowReencoder
from sfpp.diffusion.rollout import FewStepSampler, stream_rollout
from sfpp.models import FLAVOURS, CausalWanDiT, build_model
from sfpp.models.wan import build_from_pretrained, config_from_diffusers, config_from_original
from test_wan_weights import TINY_DIFFUSERS as TINY_WAN2_1
from test_wan_weights import _randomise

TOL = 1e-5
# A tiny model of the Wan2.2-TI2V shape family: Wan2.2's 48 latent channels, a small width.
TINY_DIFFUSERS = {**TINY_WAN2_1, "in_channels": 48, "out_channels": 48}
# Wan2.2-TI2V-5B's sizes (Wan2.2's wan_ti2v_5B config) as diffusers' WanTransformer3DModel writes them.
TI2V_5B_DIFFUSERS_CONFIG = {
    "_class_name": "WanTransformer3DModel",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "in_channels": 48,
    "out_channels": 48,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 14336,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
# The same sizes in the original format (Wan2.2's WanModel, model_type ti2v).
TI2V_5B_ORIGINAL_CONFIG = {
    "_class_name": "WanModel",
    "dim": 3072,
    "eps": 1e-06,
    "ffn_dim": 14336,
    "freq_dim": 256,
    "in_dim": 48,
    "model_type": "ti2v",
    "num_heads": 24,
    "num_layers": 30,
    "out_dim": 48,
    "text_len": 512,
}
# A tiny AutoencoderKLWan of the Wan2.2 kind (the GPU check's rehearsal VAE): 2x2 pixel patching
# (12 channels in and out), residual up/down blocks, a wider decoder, 48 latent channels, 3 levels:
# spatial stride 2 * 4 = 8; with per-channel statistics that are not the identity.
TINY_VAE22 = {
    **SHAPES["rehearsal_5b"].vae,
    "latents_mean": [0.01 * i for i in range(48)],
    "latents_std": [1.0 + 0.02 * i for i in range(48)],
}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# 1. The transformer ----------------------------------------------------------------------------


def test_the_5b_flavour_is_wan2_2_ti2v_5b_in_both_config_formats() -> None:
    flavour = FLAVOURS["wan2_2_ti2v_5b"]
    assert config_from_diffusers(TI2V_5B_DIFFUSERS_CONFIG) == flavour
    assert config_from_original(TI2V_5B_ORIGINAL_CONFIG) == flavour
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model("wan2_2_ti2v_5b").parameters())
    assert 4.9e9 < params < 5.1e9, params  # "5B"
    with pytest.raises(ValueError, match="i2v"):
        config_from_original({**TI2V_5B_ORIGINAL_CONFIG, "model_type": "i2v", "in_dim": 36})


@pytest.fixture(scope="module")
def reference() -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_DIFFUSERS).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def diffusers_dir(reference: WanTransformer3DModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wan22_diffusers")
    reference.save_pretrained(path)
    return path


def _inputs(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 48, 5, 8, 8, generator=g)  # (B, C, F, H, W)
    t = torch.rand(2, generator=g) * 1000  # (B,)
    context = torch.randn(2, 7, 16, generator=g)  # (B, L_text, text_dim)
    return x, t, context


@torch.no_grad()
def test_diffusers_weights_give_diffusers_outputs_with_ti2v_timesteps(reference, diffusers_dir) -> None:
    """Wan2.2's TI2V call: per-token timesteps, the first latent frame's tokens at 0 (the image)."""
    ours = build_from_pretrained(diffusers_dir, attention_backend="sdpa").eval()
    expected_config = config_from_diffusers(json.loads((diffusers_dir / "config.json").read_text()))
    assert ours.config == expected_config.with_build(attention_backend="sdpa")
    x, t, c = _inputs()
    per_frame = t[:, None].repeat(1, 5)  # (B, F)
    per_frame[:, 0] = 0.0  # the clean image latent
    tokens_per_frame = 4 * 4  # 8x8 latents in 2x2 patches
    per_token = per_frame.repeat_interleave(tokens_per_frame, dim=1)  # (B, F * tokens), frame-major
    expected = reference(x, per_token, c).sample
    assert expected.abs().max() > 1  # O(1) outputs: the tolerance means something
    assert _max_diff(ours(x, per_frame, c), expected) <= TOL
    # and the plain text-to-video call
    assert _max_diff(ours(x, t, c), reference(x, t, c).sample) <= TOL


@torch.no_grad()
def test_the_original_layout_and_config_load_the_same_model(reference, diffusers_dir, tmp_path) -> None:
    ours = build_from_pretrained(diffusers_dir, attention_backend="sdpa").eval()
    original = tmp_path / "Wan2.2-TI2V-tiny"
    original.mkdir()
    weights = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    keys = sorted(weights)
    shards = {"shard-00001-of-00002.safetensors": keys[::2], "shard-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: weights[k] for k in shard_keys}, str(original / name))
    index = {"weight_map": {k: name for name, shard_keys in shards.items() for k in shard_keys}}
    (original / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "_class_name": "WanModel",
        "dim": 32,
        "eps": 1e-06,
        "ffn_dim": 64,
        "freq_dim": 32,
        "in_dim": 48,
        "model_type": "ti2v",
        "num_heads": 2,
        "num_layers": 2,
        "out_dim": 48,
        "text_len": 512,
        "text_dim": 16,
    }
    (original / "config.json").write_text(json.dumps(config))
    loaded = build_from_pretrained(original, attention_backend="sdpa").eval()
    assert loaded.config == ours.config
    x, t, c = _inputs(5)
    assert torch.equal(loaded(x, t, c), ours(x, t, c))


# 2. TI2V conditioning inside the first chunk ---------------------------------------------------


def _student() -> CausalWanDiT:
    torch.manual_seed(0)
    return build_model(
        "tiny", causal=True, num_frames_per_chunk=3, attention_backend="sdpa", in_channels=48, out_channels=48
    ).eval()


@torch.no_grad()
def test_the_first_chunk_holds_the_image_latent_clean_at_timestep_zero(monkeypatch) -> None:
    model, sampler = _student(), FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)
    image = torch.randn(1, 48, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(2))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = CausalWanDiT.forward

    def spy(self, x, timestep, *args, **kwargs):
        seen.append((x.clone(), timestep.clone()))
        return forward(self, x, timestep, *args, **kwargs)

    monkeypatch.setattr(CausalWanDiT, "forward", spy)
    cache = model.new_kv_cache(1, 4, 4, window_frames=6)
    chunks = list(
        stream_rollout(
            model,
            context,
            cache,
            6,
            (48, 4, 4),
            sampler,
            torch.Generator().manual_seed(3),
            first_frames=image,
        )
    )
    first_chunk_calls = seen[:4]  # four denoising steps of the first chunk
    for step, (x, t) in enumerate(first_chunk_calls):
        assert torch.equal(x[:, :, :1], image)  # the image latent, clean, at every step
        assert t.shape == (1, 3) and t[0, 0] == 0 and t[0, 1] == t[0, 2] == sampler.timesteps[step]
    assert all(t.ndim == 1 for _, t in seen[4:])  # the next chunk: one timestep for every frame
    assert torch.equal(chunks[0].latents[:, :, :1], image)  # the output holds it exactly
    assert not torch.equal(chunks[0].latents[:, :, 1:2], image)  # the rest is generated
    with pytest.raises(ValueError, match="whole chunks of given frames go into the cache"):
        next(stream_rollout(model, context, model.new_kv_cache(1, 4, 4, window_frames=6), 3, (48, 4, 4),
                            sampler, first_frames=torch.zeros(1, 48, 3, 4, 4)))  # fmt: skip


# 3. The Wan2.2 VAE ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE22)
    with torch.no_grad():
        for p in vae.parameters():  # distinct from a default init: no zero biases
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("wan22_vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def codec(vae_dir: Path) -> WanVAECodec:
    return WanVAECodec(vae_dir)


@torch.no_grad()
@pytest.mark.usefixtures("single_thread")
def test_the_wan2_2_vae_codec_matches_diffusers(codec: WanVAECodec, vae_dir: Path) -> None:
    reference = AutoencoderKLWan.from_pretrained(vae_dir, local_files_only=True).eval()
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (48, 8, 4)
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 48, 3, 2, 2)
    mean, std = codec.latents_mean.view(1, 48, 1, 1, 1), codec.latents_std.view(1, 48, 1, 1, 1)
    raw = reference.encode(video).latent_dist.mode()
    assert _max_diff(latents, (raw - mean) / std) <= 1e-5
    decoded = codec.decode(latents)
    expected = reference.decode(latents * std + mean).sample
    assert decoded.shape == (1, 3, 9, 16, 16)
    assert _max_diff(decoded, expected) <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[3, 3], [1, 2, 3]])
@pytest.mark.usefixtures("single_thread")
def test_the_wan2_2_vae_streams_chunk_by_chunk_as_it_decodes_whole(codec: WanVAECodec, sizes) -> None:
    latents = torch.randn(1, 48, 6, 2, 2, generator=torch.Generator().manual_seed(2))
    full = codec.decode(latents)
    stream = codec.stream_decoder()
    streamed = torch.cat([stream.decode_chunk(c) for c in torch.split(latents, sizes, dim=2)], dim=2)
    assert streamed.shape == full.shape == (1, 3, 21, 16, 16)
    assert _max_diff(streamed, full) <= 1e-5


@torch.no_grad()
@pytest.mark.usefixtures("single_thread")
def test_window_reencoding_works_with_the_wan2_2_stride(codec: WanVAECodec) -> None:
    """The paper-scale DMD's re-encoding: a window's first latent from one pixel frame, as the teacher's clips start."""
    prefix = torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    window = torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    reencoded = WindowReencoder(mode="reencode")(prefix, window, codec, 3)
    assert reencoded.shape == window.shape
    assert torch.equal(reencoded[:, :, 1:], window[:, :, 1:])  # only the first latent changes
    # the first latent is the encoding of the window's first decoded frame, taken alone
    frames = codec.decode(torch.cat([prefix, window], dim=2))  # (1, 3, 1 + 4 * 5, H, W)
    first = frames[:, :, 1 + 4 * 2 + 3 : 1 + 4 * 2 + 4]  # the last frame of the window's first latent
    assert _max_diff(reencoded[:, :, :1], codec.encode(first)) <= 1e-4


# 4. The 5B experiments and their plans ---------------------------------------------------------


@pytest.mark.parametrize(
    ("experiment", "extra"),
    [("ode_init_5b", []), ("self_forcing_5b", ["student_ckpt=/s"]), ("extend_100s_5b", ["student_ckpt=/s"])],
)
def test_the_5b_experiments_compose_on_wan2_2_shapes(compose_train, experiment, extra) -> None:
    cfg = compose_train([f"experiment={experiment}", "wan_dir=/models/Wan2.2-TI2V-5B-Diffusers", *extra])
    assert cfg.model.flavour == "wan2_2_ti2v_5b" and cfg.codec._target_.endswith("WanVAECodec")
    assert cfg.codec.path == "/models/Wan2.2-TI2V-5B-Diffusers/vae"
    stage = cfg.stage
    if "student" in stage:  # the DMD experiments
        assert list(stage.student.latent_shape) == [48, 44, 80] and stage.student.fps == 24.0
        assert stage.window_frames == 30 and stage.student.cache_window_frames == 27
    else:
        assert stage.cache_window_frames == 27 and cfg.data.path.endswith("ode_pairs/wan2_2_ti2v_5b")


def test_the_5b_ode_pairs_config_composes() -> None:
    from hydra import compose, initialize_config_dir

    from sfpp.utils.config_dir import find_config_dir

    with initialize_config_dir(config_dir=str(find_config_dir()), version_base="1.3"):
        cfg = compose("ode_pairs", overrides=["ode_pairs=wan2_2_ti2v_5b", "wan_dir=/m"])
    assert list(cfg.generator.latent_shape) == [48, 44, 80] and cfg.generator.num_frames == 30
    assert cfg.generator.teacher.path == "/m/transformer" and cfg.task_name == "wan2_2_ti2v_5b"


@pytest.mark.parametrize("nodes", [1, 8])
def test_the_planner_prints_the_5b_table_on_8_and_64_gpus(nodes, tmp_path, capsys) -> None:
    from sfpp.plan import main

    out = tmp_path / "plan.json"
    main(
        [
            "experiment=extend_100s_5b",
            "wan_dir=/m",
            "student_ckpt=/s",
            "trainer=fsdp",
            "trainer.devices=8",
            f"trainer.num_nodes={nodes}",
            "stage.student.mixed_precision=true",
            "stage.student.activation_checkpointing=true",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    spec = data["spec"]
    assert spec["world_size"] == 8 * nodes and spec["window_frames"] == 30 and spec["rollout_frames"] == 600
    assert spec["latent_shape"] == [48, 44, 80] and spec["codec_params"] == 704_688_668  # Wan2.2's VAE
    rows = {row["item"]: row["bytes"] for row in data["rows"]}
    assert rows["generator parameters"] == pytest.approx(5.0e9 * 4 / (8 * nodes), rel=0.01)
    assert data["peak_bytes"] < 80 * 2**30  # an 80 GB GPU holds it with checkpointing
    # 3 latent frames of 880 tokens, 4 steps + the cache pass: linears, self-attention over the
    # 30-frame window, cross-attention over 512 text tokens (dim 3072, ffn 14336, 30 layers)
    tokens, dim, ffn = 3 * 880, 3072, 14336
    analytic = 5 * 30 * (2 * tokens * (6 * dim * dim + 2 * dim * ffn) + 4 * tokens * (30 * 880 + 512) * dim)
    assert data["chunk_flops"] == pytest.approx(analytic, rel=0.05)
    assert "estimated peak" in capsys.readouterr().out


def test_the_gpu_check_selects_the_5b_shapes() -> None:
    from sfpp.apps.gpu_shapes import shapes_for

    name, shapes = shapes_for("5b", rehearsal=False)
    assert name == "full_5b" and shapes.flavour == "wan2_2_ti2v_5b" and shapes.vae["z_dim"] == 48
    assert (shapes.latent_height, shapes.latent_width, shapes.window_frames) == (44, 80, 30)
    name, rehearsal = shapes_for("5b", rehearsal=True)
    assert rehearsal.model_overrides["in_channels"] == rehearsal.vae["z_dim"] == 48
    with pytest.raises(ValueError, match="unknown model"):
        shapes_for("14b", rehearsal=False)
