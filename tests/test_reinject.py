"""Tests for sfpp.diffusion.reinject: timestep range, shift, exact formula, reproducibility."""

from __future__ import annotations

import pytest
import torch

from sfpp.diffusion.reinject import NoiseReinjector
from sfpp.diffusion.schedule import shift_sigma


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_timesteps_in_range_and_consistent_with_sigma():
    reinjector = NoiseReinjector()
    timestep, sigma = reinjector.sample_timesteps(10_000, _gen())
    assert timestep.shape == sigma.shape == (10_000,)
    assert timestep.dtype == sigma.dtype == torch.float32
    assert timestep.min() >= 20.0 and timestep.max() <= 980.0
    assert torch.allclose(sigma * 1000, timestep)
    # at shift 5 about 9% of the draws clamp to 980 and 0.4% to 20
    assert (timestep == 980.0).any()
    assert (timestep == 20.0).any()


def test_timesteps_are_the_shifted_uniform_draw_then_clamped():
    reinjector = NoiseReinjector(shift=3.0, min_timestep=100.0, max_timestep=900.0)
    timestep, _ = reinjector.sample_timesteps(64, _gen(5))
    uniform = torch.rand(64, generator=_gen(5))
    assert torch.allclose(timestep, (shift_sigma(uniform, 3.0) * 1000).clamp(100.0, 900.0))


def test_shift_moves_mass_to_high_noise():
    _, sigma_1 = NoiseReinjector(shift=1.0).sample_timesteps(4_000, _gen(1))
    _, sigma_5 = NoiseReinjector(shift=5.0).sample_timesteps(4_000, _gen(1))
    assert sigma_5.median() > sigma_1.median() + 0.2  # medians ~0.83 and ~0.5
    assert abs(sigma_1.median().item() - 0.5) < 0.05
    assert abs(sigma_5.median().item() - 5 / 6) < 0.05  # shift_sigma(0.5, 5)


def test_call_is_the_exact_formula():
    x0 = torch.randn(3, 4, 5, 2, 2, generator=_gen(9))
    x_t, noise, timestep, sigma = NoiseReinjector()(x0, _gen(2))
    assert x_t.shape == noise.shape == x0.shape
    assert timestep.shape == sigma.shape == (3,)
    s = sigma[:, None, None, None, None]  # (B, 1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - s) * x0 + s * noise, atol=1e-6)
    # the timesteps are drawn first, then the noise, from the same generator
    g = _gen(2)
    expected_t, _ = NoiseReinjector().sample_timesteps(3, g)
    assert torch.equal(timestep, expected_t)
    assert torch.equal(noise, torch.randn(x0.shape, generator=g))


def test_noise_is_standard_normal():
    x0 = torch.zeros(4, 16, 3, 8, 8)
    _, noise, _, _ = NoiseReinjector()(x0, _gen(3))
    assert abs(noise.mean().item()) < 0.03
    assert abs(noise.std().item() - 1.0) < 0.03


def test_reproducible_and_keeps_the_graph():
    x0 = torch.randn(2, 3, 3, 4, 4, generator=_gen(4), requires_grad=True)
    a = NoiseReinjector()(x0, _gen(11))
    b = NoiseReinjector()(x0, _gen(11))
    c = NoiseReinjector()(x0, _gen(12))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    a[0].sum().backward()
    assert torch.allclose(x0.grad, (1 - a[3])[:, None, None, None, None].expand_as(x0))


def test_half_precision_latents_keep_their_dtype():
    x0 = torch.randn(2, 3, 3, 4, 4, generator=_gen(4)).to(torch.bfloat16)
    x_t, noise, timestep, _ = NoiseReinjector()(x0, _gen(0))
    assert x_t.dtype == noise.dtype == torch.bfloat16
    assert timestep.dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match="min_timestep"):
        NoiseReinjector(min_timestep=990.0, max_timestep=980.0)
    with pytest.raises(ValueError, match="max_timestep"):
        NoiseReinjector(max_timestep=1001.0)
    with pytest.raises(ValueError, match="shift"):
        NoiseReinjector(shift=0.0)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        NoiseReinjector(num_train_timesteps=0)
    with pytest.raises(ValueError, match="batch_size"):
        NoiseReinjector().sample_timesteps(0, _gen())
