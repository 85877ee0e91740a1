"""Tests for sfpp.diffusion.window: start distributions, chunk alignment, reproducibility, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sfpp.diffusion.window import WindowSampler


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_covers_every_chunk_aligned_start_evenly():
    sampler = WindowSampler(window_frames=21, num_frames_per_chunk=3)
    rollout_frames = 42  # starts 0, 3, ..., 21: 8 of them
    assert sampler.num_starts(rollout_frames) == 8
    draws = 20_000
    g = _gen(0)
    counts = Counter(sampler.sample(rollout_frames, g) for _ in range(draws))
    assert sorted(counts) == list(range(0, 22, 3))
    expected = draws / 8
    for start, count in counts.items():
        assert abs(count - expected) < 0.08 * expected, (start, count)  # ~6 sigma


def test_uniform_with_single_frame_chunks_reaches_both_ends():
    sampler = WindowSampler(window_frames=4)
    g = _gen(1)
    starts = {sampler.sample(10, g) for _ in range(2_000)}
    assert starts == set(range(7))


def test_window_equal_to_rollout_has_one_start():
    for mode in ("uniform", "last"):
        sampler = WindowSampler(window_frames=21, mode=mode, num_frames_per_chunk=3)
        assert sampler.sample(21, _gen()) == 0


def test_last_is_the_newest_window():
    sampler = WindowSampler(window_frames=21, mode="last", num_frames_per_chunk=3)
    assert sampler.sample(399, _gen()) == 378
    assert sampler.sample(42, _gen()) == 21


def test_reproducible():
    mode = "uniform"
    sampler = WindowSampler(window_frames=3, mode=mode, num_frames_per_chunk=3)
    g_a, g_b, g_c = _gen(7), _gen(7), _gen(8)
    a = [sampler.sample(99, g_a) for _ in range(50)]
    b = [sampler.sample(99, g_b) for _ in range(50)]
    c = [sampler.sample(99, g_c) for _ in range(50)]
    assert a == b
    assert a != c
    assert len(set(a)) > 5


def test_window_longer_than_rollout_names_both_settings():
    sampler = WindowSampler(window_frames=21, num_frames_per_chunk=3)
    with pytest.raises(ValueError, match=r"window_frames=21.*rollout_frames=18"):
        sampler.sample(18, _gen())


def test_chunk_multiples_required():
    with pytest.raises(ValueError, match=r"window_frames=20.*num_frames_per_chunk=3"):
        WindowSampler(window_frames=20, num_frames_per_chunk=3)
    sampler = WindowSampler(window_frames=21, num_frames_per_chunk=3)
    with pytest.raises(ValueError, match=r"rollout_frames=40.*num_frames_per_chunk=3"):
        sampler.sample(40, _gen())


def test_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        WindowSampler(window_frames=3, mode="first")
    with pytest.raises(ValueError, match="window_frames"):
        WindowSampler(window_frames=0)
    with pytest.raises(ValueError, match="num_frames_per_chunk"):
        WindowSampler(window_frames=3, num_frames_per_chunk=0)
    with pytest.raises(
        ValueError, match="mode"
    ):  # the Beta-distributed ablation was dropped: it found nothing
        WindowSampler(window_frames=3, mode="beta")
    with pytest.raises(ValueError, match="rollout_frames"):
        WindowSampler(window_frames=3).sample(0, _gen())
