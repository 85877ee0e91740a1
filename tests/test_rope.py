import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from sfpp.models.rope import Rope3D, apply_rope, rope_axis_dims


def test_axis_split_matches_wan():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(16) == (8, 4, 4)
    with pytest.raises(ValueError, match="head_dim"):
        rope_axis_dims(7)


def test_tables_match_diffusers_wan_rope():
    ours = Rope3D(head_dim=24, max_seq_len=64)
    ref = WanRotaryPosEmbed(attention_head_dim=24, patch_size=(1, 2, 2), max_seq_len=64)
    ref_cos, ref_sin = ref(torch.zeros(1, 4, 5, 6, 8))  # (1, L, 1, 24): 5 frames of 3x4 tokens, interleaved
    cos, sin = ours(0, 5, 3, 4)
    assert torch.allclose(cos, ref_cos[0, :, 0, 0::2].float(), atol=1e-6)
    assert torch.allclose(sin, ref_sin[0, :, 0, 1::2].float(), atol=1e-6)


def test_frame_offset_equals_slice_of_longer_grid():
    rope = Rope3D(head_dim=16, max_seq_len=32)
    cos_all, sin_all = rope(0, 10, 2, 3)
    cos, sin = rope(6, 4, 2, 3)
    assert torch.equal(cos, cos_all[6 * 6 :]) and torch.equal(sin, sin_all[6 * 6 :])


def test_apply_rope_is_a_rotation_and_relative():
    rope = Rope3D(head_dim=16, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 16, generator=g), torch.randn(1, 1, 2, 16, generator=g)

    def score(fq, fk):
        cq, sq = rope(fq, 1, 1, 1)
        ck, sk = rope(fk, 1, 1, 1)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    rotated = apply_rope(q, *rope(5, 1, 1, 1))
    assert torch.allclose(rotated.norm(), q.norm(), atol=1e-5)
    assert torch.allclose(score(3, 1), score(13, 11), atol=1e-5)  # depends on the frame distance only
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_positions_beyond_table_raise():
    rope = Rope3D(head_dim=16, max_seq_len=8)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        rope(6, 3, 1, 1)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        rope(0, 1, 9, 1)


def test_apply_rope_matches_the_pairwise_rotation_formula():
    rope = Rope3D(head_dim=24, max_seq_len=64)
    cos, sin = rope(7, 2, 3, 4)  # (24, 12)
    x = torch.randn(2, 24, 3, 24, generator=torch.Generator().manual_seed(0))
    even, odd = x[..., 0::2], x[..., 1::2]  # the interleaved pairs (x[2i], x[2i + 1])
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    expected = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    assert torch.allclose(apply_rope(x, cos, sin), expected, atol=1e-6)
    bf16 = apply_rope(x.bfloat16(), cos, sin)
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), expected, atol=3e-2)
