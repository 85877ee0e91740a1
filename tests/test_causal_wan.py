import pytest
import torch

from sfpp.models import FLAVOURS, FrameAttentionPattern, build_model
from sfpp.models.causal_wan import sinusoidal_embedding


def _inputs(batch=2, frames=6, size=8, channels=4, text_len=5, text_dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, size, size, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    context = torch.randn(batch, text_len, text_dim, generator=g)
    return x, t, context


def _tiny(causal=True, chunk=2, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(
        "tiny", causal=causal, num_frames_per_chunk=chunk, attention_backend="sdpa", **kw
    ).eval()


def test_output_shape_and_determinism():
    model = _tiny()
    x, t, c = _inputs()
    out = model(x, t, c)
    assert out.shape == x.shape
    assert torch.equal(out, model(x, t, c))
    assert torch.equal(_tiny()(x, t, c), out)  # same seed, same weights, same output


def test_scalar_and_per_frame_timesteps_agree():
    model = _tiny(causal=False)
    x, _, c = _inputs()
    t = torch.tensor([100.0, 700.0])
    assert torch.allclose(model(x, t, c), model(x, t[:, None].expand(2, 6), c))


def test_per_frame_timestep_changes_only_its_frame_in_causal_mode():
    model = _tiny(chunk=2)
    x, t, c = _inputs()
    t2 = t.clone()
    t2[:, 4] += 300  # frame 4 belongs to the last chunk (frames 4, 5)
    a, b = model(x, t, c), model(x, t2, c)
    assert torch.allclose(a[:, :, :4], b[:, :, :4], atol=1e-6)
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])


def test_block_causal_does_not_see_the_future_but_bidirectional_does():
    x, t, c = _inputs()
    x2 = x.clone()
    x2[:, :, 4:] = torch.randn_like(x2[:, :, 4:])
    causal, bidir = _tiny(chunk=2), _tiny(causal=False)
    assert torch.allclose(causal(x, t, c)[:, :, :4], causal(x2, t, c)[:, :, :4], atol=1e-6)
    assert not torch.allclose(bidir(x, t, c)[:, :, :4], bidir(x2, t, c)[:, :, :4])
    # Within a chunk, frames see each other.
    assert not torch.allclose(causal(x, t, c)[:, :, 4], causal(x2, t, c)[:, :, 4])


def test_gradient_reaches_the_first_layer():
    model = _tiny().train()
    x, t, c = _inputs()
    model(x, t, c).square().mean().backward()
    grad = model.patch_embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert model.text_embedding[0].weight.grad.abs().sum() > 0


def test_sinusoidal_embedding_golden():
    emb = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 4)
    # half = 2, frequencies 1 and 1e-2: [cos(t), cos(t/100), sin(t), sin(t/100)]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5403023, 0.99995, 0.84147098, 0.00999983]])
    assert torch.allclose(emb, expected, atol=1e-6)


def test_flavours_registry_and_reference_sizes():
    assert set(FLAVOURS) == {"tiny", "toy", "wan_1_3b", "wan_14b", "wan2_2_ti2v_5b"}
    with torch.device("meta"):
        n_1_3b = sum(p.numel() for p in build_model("wan_1_3b").parameters())
        n_toy = sum(p.numel() for p in build_model("toy").parameters())
    assert n_1_3b == 1_418_996_800  # Wan2.1-T2V-1.3B
    assert 3e6 < n_toy < 6e6
    model = build_model("tiny", num_layers=1)
    assert len(model.blocks) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(flavour="huge"), "registered flavours"),
        (dict(flavour="tiny", num_layerz=3), "unknown CausalWanDiT arguments"),
        (dict(flavour="tiny", patch_size=(2, 2, 2)), "patch_size"),
        (dict(flavour="tiny", num_heads=3), "divisible"),
        (dict(flavour="tiny", attention_backend="magic"), "attention_backend"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_bad_inputs_raise():
    model = _tiny()
    x, t, c = _inputs()
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :3], t, c)
    with pytest.raises(ValueError, match="timestep"):
        model(x, t[:, :3], c)
    with pytest.raises(ValueError, match="context"):
        model(x, t, c[:1])
    with pytest.raises(ValueError, match=f"text_dim={model.config.text_dim}"):
        model(x, t, c[..., :-1])
    with pytest.raises(ValueError, match="divisible"):
        model(x[..., :7], t, c)
    with pytest.raises(ValueError, match="needs a kv_cache"):
        model(x, t, c, write_cache=True)


def test_rope_table_limit_raises():
    model = _tiny(rope_max_seq_len=8)
    x, t, c = _inputs(frames=6)
    model(x, t, c, frame_offset=2)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        model(x, t, c, frame_offset=3)


def test_attention_pattern_override():
    model = _tiny(chunk=2)
    x, t, c = _inputs(frames=8)
    full = model(x, t, c)
    windowed = model(x, t, c, attention_pattern=FrameAttentionPattern(2, window_frames=2))
    assert torch.allclose(full[:, :, :4], windowed[:, :, :4], atol=1e-6)  # window covers the past here
    assert not torch.allclose(full[:, :, 6:], windowed[:, :, 6:])


def test_x0_prediction_returns_the_matching_flow():
    torch.manual_seed(0)
    flow_model = build_model("tiny", attention_backend="sdpa")
    torch.manual_seed(0)
    x0_model = build_model("tiny", attention_backend="sdpa", prediction_type="x0")
    x, t, c = _inputs()
    raw = flow_model(x, t, c)  # same weights: the raw head output, read as x0 by the x0 model
    sigma = (t / 1000)[:, None, :, None, None]
    assert torch.allclose(x0_model(x, t, c), (x - raw) / sigma, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        build_model("tiny", prediction_type="eps")


@pytest.mark.parametrize("patch_size", [(1, 2, 2), (1, 4, 4), (1, 2, 4)])
def test_patchify_equals_the_patch_embedding_convolution(patch_size):
    torch.manual_seed(0)
    model = build_model("tiny", patch_size=patch_size, in_channels=3, out_channels=3)
    x = torch.randn(2, 3, 5, 8, 16)
    by_conv = model.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, dim, F, H', W') -> (B, L, dim)
    assert torch.allclose(model._patchify(x), by_conv, atol=1e-5)
    # The gradient reaches the convolution's own parameters (the ones Wan checkpoints name).
    model._patchify(x).sum().backward()
    assert model.patch_embedding.weight.grad is not None and model.patch_embedding.bias.grad is not None


def test_cpu_bf16_autocast_keeps_the_head_in_float32_and_trains():
    model = _tiny(causal=False, prediction_type="x0").train()
    x, t, c = _inputs()
    reference = model(x, t, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, c)
    # The head projects in float32: the flow is not rounded to bf16's 8-bit mantissa.
    assert out.dtype == torch.float32
    rounded = out.to(torch.bfloat16).float()
    assert not torch.equal(rounded, out)
    # bf16 projections move the output by about bf16's rounding (2^-8), no more.
    error = (out - reference).abs().mean() / reference.abs().mean()
    assert 0 < error < 2e-2, error
    out.square().mean().backward()
    grad = model.patch_embedding.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
