"""The Bayes-optimal one-object denoiser and the excess-error check built on it."""

from __future__ import annotations

import pytest
import torch

from sfpp.diffusion.sampling import EulerSampler
from sfpp.world import COLOURS, PALETTE, SHAPES, WorldSpec, shape_mask
from sfpp.world.ideal_denoiser import (
    denoiser_excess_error,
    ideal_x0,
    object_templates,
    one_object_clips,
    shape_handover,
)

SMALL = WorldSpec(frame_size=8, min_size=3, max_size=4)
BACKGROUND = (-0.9, -0.8, -0.85)


def test_templates_cover_every_colour_shape_size_and_position() -> None:
    bank = object_templates(BACKGROUND, SMALL)
    positions = (8 - 3 + 1) ** 2 + (8 - 4 + 1) ** 2
    assert bank.frames.shape == (len(COLOURS) * len(SHAPES) * positions, 3, 8, 8)
    assert int(bank.allowed("red", "circle").sum()) == positions
    # A template is the background with exactly one shape mask painted in its colour.
    first = bank.frames[bank.allowed("blue", "triangle")][0]
    painted = (first - torch.tensor(BACKGROUND)[:, None, None]).abs().sum(0) > 1e-6  # (H, W)
    assert int(painted.sum()) == int(shape_mask("triangle", 3).sum())
    assert torch.equal(
        first[:, painted], torch.tensor(PALETTE["blue"])[:, None].expand(3, int(painted.sum()))
    )


def test_one_allowed_template_is_returned_whatever_the_input() -> None:
    bank = object_templates(BACKGROUND, SMALL)
    keep = torch.zeros(len(bank.frames), dtype=torch.bool)
    keep[17] = True
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ideal_x0(x_t, 0.7, bank.frames, keep), bank.frames[17].expand(2, 3, 8, 8))


def test_posterior_mean_matches_an_explicit_bayes_computation() -> None:
    bank = object_templates(BACKGROUND, SMALL)
    keep = bank.allowed("green")
    candidates = bank.frames[keep].double()
    sigma = 0.6
    generator = torch.Generator().manual_seed(1)
    x_t = (1 - sigma) * bank.frames[keep][5:6] + sigma * torch.randn(1, 3, 8, 8, generator=generator)
    log_likelihood = torch.stack(
        [-((x_t[0].double() - (1 - sigma) * c) ** 2).sum() / (2 * sigma**2) for c in candidates]
    )
    posterior = torch.exp(log_likelihood - torch.logsumexp(log_likelihood, 0))
    expected = (posterior[:, None, None, None] * candidates).sum(0)
    assert torch.allclose(ideal_x0(x_t, sigma, bank.frames, keep)[0].double(), expected, atol=1e-6)


def test_low_noise_is_denoised_exactly() -> None:
    data = one_object_clips(6, 2, SMALL, seed=3)
    x_t = 0.8 * data.clips + 0.2 * torch.randn(data.clips.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(data.ideal(x_t, 0.2), data.clips, atol=1e-5)


def test_identity_denoiser_has_the_analytic_error_and_the_shape_word_helps_the_ideal() -> None:
    sigmas = (0.3, 0.6)
    results = denoiser_excess_error(lambda x_t, sigma, prompts: x_t, sigmas, num_clips=18, num_frames=2)
    clips = one_object_clips(18, 2).clips
    for sigma in sigmas:
        # x_t - x0 = sigma * (noise - x0): its mean square is sigma^2 * (1 + E[x0^2]).
        expected = sigma**2 * (1.0 + float(clips.square().mean()))
        assert results[sigma]["model"] == pytest.approx(expected, rel=0.05)
        assert results[sigma]["excess"] == pytest.approx(results[sigma]["model"] - results[sigma]["ideal"])
    assert results[0.3]["ideal"] < 1e-6
    assert results[0.6]["ideal"] < results[0.6]["ideal_colour_only"]


def test_the_ideal_as_a_denoiser_has_no_excess_and_runs_are_reproducible() -> None:
    data = one_object_clips(6, 2, seed=4)

    def ideal(x_t: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        assert prompts == data.prompts
        return data.ideal(x_t, float(sigma[0]))

    first = denoiser_excess_error(ideal, (0.5, 0.8), num_clips=6, num_frames=2, seed=4)
    assert all(abs(v["excess"]) < 1e-9 for v in first.values())
    assert first == denoiser_excess_error(ideal, (0.5, 0.8), num_clips=6, num_frames=2, seed=4)


@pytest.mark.parametrize("sigma", [0.0, 1.0, -0.1])
def test_bad_noise_levels_are_refused(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        denoiser_excess_error(lambda x, s, p: x, (sigma,), num_clips=1, num_frames=1)


def test_no_clips_or_no_allowed_template_is_refused() -> None:
    with pytest.raises(ValueError, match="num_clips"):
        one_object_clips(0, 1)
    bank = object_templates(BACKGROUND, SMALL)
    with pytest.raises(ValueError, match="no template"):
        ideal_x0(torch.zeros(1, 3, 8, 8), 0.5, bank.frames, torch.zeros(len(bank.frames), dtype=torch.bool))


def test_shape_handover_finds_where_the_ideal_decides_the_shape() -> None:
    grid = EulerSampler(num_steps=16, shift=3.0).grid()
    informed = shape_handover(one_object_clips(18, 1).denoiser(), grid, (0.0, 0.3, 0.9), num_frames=1)
    # Sampling with the shape word draws every prompted shape; by sigma 0.3 the shape is drawn, so a
    # shape-blind finish keeps it; from sigma 0.9 the blind finish draws whatever the noise suggests.
    assert informed[0.0] == {"clean_frame_fraction": 1.0, "detected_fraction": 1.0, "shape_accuracy": 1.0}
    assert informed[0.3]["shape_accuracy"] == 1.0
    assert informed[0.9]["shape_accuracy"] < 0.5
    assert informed[0.9]["clean_frame_fraction"] == 1.0  # the blind finish still draws one clean object
    blind = shape_handover(one_object_clips(18, 1).denoiser(use_shape=False), grid, (0.0,), num_frames=1)
    assert blind[0.0]["shape_accuracy"] < 0.5
    # Each handover branches off the one model trajectory: asked alone, it gives the same scores.
    assert shape_handover(one_object_clips(18, 1).denoiser(), grid, (0.9,), num_frames=1) == {
        0.9: informed[0.9]
    }


@pytest.mark.parametrize(
    ("grid", "handover", "match"),
    [
        ([1.0, 0.5], (0.0,), "grid"),
        ([1.0, 0.2, 0.5, 0.0], (0.0,), "grid"),
        ([1.0, 0.5, 0.0], (), "at least one"),
        ([1.0, 0.5, 0.0], (1.0,), r"\[0, 1\)"),
    ],
)
def test_shape_handover_refuses_bad_grids_and_levels(
    grid: list[float], handover: tuple[float, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        shape_handover(lambda x, s, p: x, grid, handover, num_clips=1, num_frames=1)


def test_the_ideal_as_a_denoiser_callable() -> None:
    data = one_object_clips(4, 2)
    denoise = data.denoiser()
    x_t = torch.randn(data.clips.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(denoise(x_t, torch.full((4,), 0.5), data.prompts), data.ideal(x_t, 0.5))
    # At sigma 1 it is the prior mean: the same for any input, and the average of the allowed templates.
    prior = denoise(x_t, torch.ones(4), data.prompts)
    assert torch.equal(prior, denoise(torch.zeros_like(x_t), torch.ones(4), data.prompts))
    colour, shape = data.pairs[0]
    expected = data.templates[0].frames[data.templates[0].allowed(colour, shape)].mean(0)
    assert torch.allclose(prior[0, :, 1], expected)
    with pytest.raises(ValueError, match="prompts"):
        denoise(x_t, torch.full((4,), 0.5), data.prompts[::-1])
    with pytest.raises(ValueError, match="one noise level"):
        denoise(x_t, torch.tensor([0.5, 0.5, 0.5, 0.6]), data.prompts)
