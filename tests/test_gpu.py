"""CUDA paths: flex block masks and their backward, SDPA on CUDA, bf16 autocast against float32.

Every test carries the ``gpu`` marker (``make gpu-check`` runs them); they skip without CUDA.
Tolerances: flex and SDPA compute the same float32 attention (1e-4); bf16 autocast keeps a
model's output within 5e-2 of its float32 output (bf16 has ~3 significant digits).
"""

from __future__ import annotations

import pytest
import torch

from sfpp.models import FrameAttentionPattern, build_model
from sfpp.models.attention import SDPAttention, build_attention_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _qkv(length: int, heads: int = 2, dim: int = 32, requires_grad: bool = False):
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, length, heads, dim)
    return [
        torch.randn(shape, device="cuda", generator=generator).requires_grad_(requires_grad) for _ in range(3)
    ]


def test_flex_block_mask_backward_matches_sdpa():
    pattern = FrameAttentionPattern(2, window_frames=4, sink_frames=1)
    device = torch.device("cuda")
    flex, sdpa = build_attention_backend("flex"), SDPAttention()
    q, k, v = _qkv(8 * 16, requires_grad=True)
    out = flex(q, k, v, flex.prepare_mask(pattern, 8, 16, device))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = sdpa(q2, k2, v2, sdpa.prepare_mask(pattern, 8, 16, device))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q2, k2, v2))
    assert (out - ref).abs().max() < 1e-4
    for grad, expected in zip(grads, ref_grads, strict=True):
        assert (grad - expected).abs().max() < 1e-3


def test_sdpa_on_cuda_matches_the_cpu():
    pattern = FrameAttentionPattern(2, window_frames=4)
    q, k, v = _qkv(6 * 16)
    sdpa = SDPAttention()
    out = sdpa(q, k, v, sdpa.prepare_mask(pattern, 6, 16, torch.device("cuda")))
    ref = sdpa(q.cpu(), k.cpu(), v.cpu(), sdpa.prepare_mask(pattern, 6, 16, torch.device("cpu")))
    assert (out.cpu() - ref).abs().max() < 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_autocast_stays_close_to_float32(causal: bool):
    torch.manual_seed(0)
    model = build_model("tiny", causal=causal, num_frames_per_chunk=2).cuda()
    x = torch.randn(2, 4, 4, 8, 8, device="cuda")
    t = torch.tensor([[900.0, 900.0, 400.0, 400.0], [500.0, 500.0, 100.0, 100.0]], device="cuda")
    context = torch.randn(2, 8, 16, device="cuda")
    with torch.no_grad():
        reference = model(x, t, context)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = model(x, t, context)
    assert (mixed.float() - reference).abs().max() < 5e-2 * reference.abs().max().clamp_min(1.0)
