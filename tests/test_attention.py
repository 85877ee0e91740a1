import logging

import pytest
import torch

from sfpp.models import FrameAttentionPattern, build_model
from sfpp.models.attention import AutoAttention, SDPAttention, build_attention_backend, flash_attn_available


def _naive_attention(q, k, v, mask=None):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _qkv(lq=12, lk=12, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, 3, 8, generator=g).to(device, dtype) for n in (lq, lk, lk)]


def test_sdpa_matches_naive_attention_with_and_without_mask():
    q, k, v = _qkv()
    sdpa = SDPAttention()
    assert torch.allclose(sdpa(q, k, v), _naive_attention(q, k, v), atol=1e-5)
    pattern = FrameAttentionPattern(num_frames_per_chunk=2, window_frames=2, sink_frames=1)
    mask = sdpa.prepare_mask(pattern, num_frames=6, tokens_per_frame=2, device=torch.device("cpu"))
    assert mask.shape == (12, 12)
    assert torch.allclose(sdpa(q, k, v, mask), _naive_attention(q, k, v, mask), atol=1e-5)


def test_frame_pattern_rules():
    causal = FrameAttentionPattern(2).frame_mask(6)
    assert causal[1, 0] and causal[0, 1] and not causal[1, 2] and causal[5, 0]
    sliding = FrameAttentionPattern(2, window_frames=2, sink_frames=1).frame_mask(8)
    # Chunk starting at 6 sees the sink (0), the window (4, 5) and itself (6, 7).
    assert sliding[6].nonzero().flatten().tolist() == [0, 4, 5, 6, 7]
    assert FrameAttentionPattern().frame_mask(3).all()
    with pytest.raises(ValueError, match="block-causal"):
        FrameAttentionPattern(window_frames=3)


def test_auto_uses_sdpa_on_cpu_and_logs_once(caplog):
    auto = AutoAttention()
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="sfpp.models.attention"):
        out1, out2 = auto(q, k, v), auto(q, k, v)
    assert torch.equal(out1, SDPAttention()(q, k, v)) and torch.equal(out1, out2)
    assert [r.getMessage() for r in caplog.records].count(
        "attention backend 'auto' chose sdpa for unmasked torch.float32 attention on cpu"
    ) == 1


def test_auto_and_sdpa_models_agree_on_cpu():
    x = torch.randn(1, 4, 4, 8, 8)
    t, c = torch.full((1,), 500.0), torch.randn(1, 3, 16)
    torch.manual_seed(0)
    a = build_model("tiny", causal=True, num_frames_per_chunk=2, attention_backend="auto")
    torch.manual_seed(0)
    b = build_model("tiny", causal=True, num_frames_per_chunk=2, attention_backend="sdpa")
    assert torch.allclose(a(x, t, c), b(x, t, c), atol=1e-6)


def test_flash_backend_without_flash_attn_gives_install_hint():
    if flash_attn_available():
        pytest.skip("flash-attn is installed")
    with pytest.raises(ImportError, match=r"sfpp\[flash\]"):
        build_attention_backend("flash")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_matches_sdpa_on_cuda():
    if not flash_attn_available():
        pytest.skip("flash-attn not installed")
    q, k, v = _qkv(lq=64, lk=96, device="cuda", dtype=torch.bfloat16)
    out = build_attention_backend("flash")(q, k, v)
    ref = SDPAttention()(q.float(), k.float(), v.float())
    assert (out.float() - ref).abs().max() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_block_mask_matches_sdpa_dense_mask_on_cuda():
    pattern = FrameAttentionPattern(2, window_frames=4, sink_frames=1)
    q, k, v = _qkv(lq=8 * 16, lk=8 * 16, device="cuda")
    flex = build_attention_backend("flex")
    dev = torch.device("cuda")
    out = flex(q, k, v, flex.prepare_mask(pattern, 8, 16, dev))
    ref = SDPAttention()(q, k, v, SDPAttention().prepare_mask(pattern, 8, 16, dev))
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_attends_half_precision_cpu_inputs_in_float32(dtype):
    q, k, v = (t.to(dtype) for t in _qkv())
    out = SDPAttention()(q, k, v)
    assert out.dtype == dtype
    # computed from the half-precision inputs in float32, rounded once at the end
    assert torch.equal(out, SDPAttention()(q.float(), k.float(), v.float()).to(dtype))
    assert torch.allclose(out.float(), _naive_attention(q.float(), k.float(), v.float()), atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(SDPAttention()(q, k, v), out)  # autocast does not reach inside
