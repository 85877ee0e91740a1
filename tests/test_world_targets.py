"""Exact posterior-mean targets of the built-in world's single frames (sfpp.world.targets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfpp.world import (
    COLOURS,
    PALETTE,
    SHAPES,
    BackgroundSpec,
    ObjectSpec,
    VideoSpec,
    WorldDataModule,
    WorldPosteriorTarget,
    frame_layout,
    placement_log_prior,
    render,
    shape_mask,
    spec_from_prompt,
)

PROMPTS = (
    "a red circle bouncing on a dark background",
    "a blue square and a yellow triangle bouncing on a slowly changing background",
    "a green triangle and a magenta circle bouncing on a dark background",
    "a cyan square bouncing on a slowly changing background",
)


def _paint(objects: np.ndarray, background: np.ndarray, frame_size: int = 16) -> np.ndarray:
    """A frame ``(3, H, W)`` painted from a layout, back to front."""
    frame = np.empty((frame_size, frame_size, 3), dtype=np.float32)
    frame[:] = background
    for colour, shape, side, x, y in objects[::-1].tolist():
        if colour >= 0:
            frame[y : y + side, x : x + side][shape_mask(SHAPES[shape], side)] = PALETTE[COLOURS[colour]]
    return frame.transpose(2, 0, 1)


@pytest.mark.parametrize("frame", [0, 13])
def test_frame_layout_paints_the_rendered_frame(frame: int) -> None:
    for seed, prompt in enumerate(PROMPTS):
        spec = spec_from_prompt(prompt, seed)
        objects, background = frame_layout(spec, frame)
        assert objects.shape == (2, 5) and background.shape == (3,)
        assert (objects[len(spec.objects) :] == -1).all()
        np.testing.assert_array_equal(_paint(objects, background), render(spec, 1, frame)[:, 0])
    with pytest.raises(ValueError, match="frame must be >= 0"):
        frame_layout(spec_from_prompt(PROMPTS[0], 0), -1)


def test_placement_prior_is_the_samplers() -> None:
    """Sizes and rounded start positions drawn by the world follow placement_log_prior."""
    placements, log_prior = placement_log_prior(16, 5, 7)
    assert math.isclose(float(np.exp(log_prior).sum()), 1.0, rel_tol=1e-12)
    expected: dict[tuple[int, int], float] = {}
    for (side, x, _), p in zip(placements.tolist(), np.exp(log_prior).tolist(), strict=True):
        expected[(side, x)] = expected.get((side, x), 0.0) + p
    draws = 6000
    counts: dict[tuple[int, int], int] = {}
    for seed in range(draws):
        objects, _ = frame_layout(spec_from_prompt(PROMPTS[0], seed))
        key = (int(objects[0, 2]), int(objects[0, 3]))
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(expected)
    for key, p in expected.items():
        tolerance = 4.5 * math.sqrt(p * (1 - p) / draws)
        assert abs(counts.get(key, 0) / draws - p) < tolerance, key
    # the end pixels really are half as likely as their neighbours
    assert expected[(5, 0)] == pytest.approx(expected[(5, 1)] / 2)


def _brute_force_target(
    objects: np.ndarray, background: np.ndarray, x_t: np.ndarray, sigma: float
) -> np.ndarray:
    """Average over present objects of the posterior mean with that object's placement free.

    Every candidate frame is rendered by the world's own renderer from a VideoSpec.
    """
    placements, log_prior = placement_log_prior(16, 5, 7)
    back = BackgroundSpec(kind="dark", base=tuple(float(v) for v in background))
    present = [row for row in range(2) if objects[row, 0] >= 0]

    def spec_object(row: np.ndarray) -> ObjectSpec:
        colour, shape, side, x, y = row.tolist()
        return ObjectSpec(SHAPES[shape], COLOURS[colour], side, (float(x), float(y)), (0.0, 0.0))

    estimates = []
    for free in present:
        frames = []
        for side, x, y in placements.tolist():
            row = objects[free].copy()
            row[2:] = (side, x, y)
            specs = [spec_object(row if r == free else objects[r]) for r in present]
            frames.append(render(VideoSpec(tuple(specs), back), 1)[:, 0].astype(np.float64))
        frames = np.stack(frames)  # (P, 3, H, W)
        distance = ((x_t[None] - (1 - sigma) * frames) ** 2).reshape(len(frames), -1).sum(1)
        logits = -distance / (2 * sigma**2) + log_prior
        weights = np.exp(logits - logits.max())
        estimates.append(np.tensordot(weights / weights.sum(), frames, axes=1))
    return np.mean(estimates, axis=0)


def _laid_out_batch(seeds: range) -> dict:
    """One-frame clips of PROMPTS with their layouts, as the image batches carry them."""
    videos, layouts, backgrounds = [], [], []
    for seed in seeds:
        spec = spec_from_prompt(PROMPTS[seed % len(PROMPTS)], seed)
        objects, background = frame_layout(spec)
        videos.append(torch.from_numpy(render(spec, 1)))
        layouts.append(torch.from_numpy(objects))
        backgrounds.append(torch.from_numpy(background))
    return {
        "video": torch.stack(videos),
        "layout": torch.stack(layouts),
        "background": torch.stack(backgrounds),
    }


@pytest.mark.parametrize("sigma", [0.3, 0.6, 0.9])
def test_target_is_the_brute_force_posterior_mean(sigma: float) -> None:
    batch = _laid_out_batch(range(4))
    x0 = batch["video"]  # (4, 3, 1, 16, 16)
    x_t = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    target = WorldPosteriorTarget()(x0, x_t, torch.full((4,), sigma), batch)
    assert target.shape == x0.shape and target.dtype == x0.dtype
    for b in range(4):
        reference = _brute_force_target(
            batch["layout"][b].numpy(), batch["background"][b].numpy(), x_t[b, :, 0].double().numpy(), sigma
        )
        np.testing.assert_allclose(target[b, :, 0].numpy(), reference, atol=2e-5)


def test_target_limits_and_range() -> None:
    """x0 at sigma -> 0, the prior mean at sigma -> 1, and in between a mixture of the templates."""
    batch = _laid_out_batch(range(8))
    x0 = batch["video"]
    target_of = WorldPosteriorTarget()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    low = target_of(x0, (1 - 1e-3) * x0 + 1e-3 * noise, torch.full((8,), 1e-3), batch)
    torch.testing.assert_close(low, x0, atol=1e-5, rtol=0)
    high = target_of(x0, noise, torch.ones(8), batch)
    # one-object frame 0: background plus the prior probability of each pixel times the colour change
    _, log_prior = placement_log_prior(16, 5, 7)
    coverage = torch.einsum(
        "p,ph->h", torch.from_numpy(np.exp(log_prior)), target_of.masks[SHAPES.index("circle")]
    )
    colour = torch.tensor(PALETTE["red"], dtype=torch.float64)[:, None]
    background = batch["background"][0].double()[:, None]
    expected = (background + coverage[None] * (colour - background)).reshape(3, 1, 16, 16)
    torch.testing.assert_close(high[0].double(), expected, atol=1e-6, rtol=0)
    # in between: neither limit, and on one-object frames every pixel lies between the background
    # and the object's colour (a posterior mean of templates that differ only there)
    sigma = torch.full((8,), 0.7)
    mid = target_of(x0, (1 - 0.7) * x0 + 0.7 * noise, sigma, batch)
    assert (mid - x0).abs().max() > 0.1
    assert not torch.allclose(mid, high)
    for b in torch.nonzero(batch["layout"][:, 1, 0] < 0).flatten().tolist():
        back = batch["background"][b][:, None, None, None]  # (3, 1, 1, 1)
        paint = torch.tensor(PALETTE[COLOURS[int(batch["layout"][b, 0, 0])]])[:, None, None, None]
        low_end, high_end = torch.minimum(back, paint), torch.maximum(back, paint)
        assert bool(((mid[b] >= low_end - 1e-6) & (mid[b] <= high_end + 1e-6)).all())


def test_videos_pass_through_and_bad_input_is_refused() -> None:
    target_of = WorldPosteriorTarget()
    clips = torch.zeros(2, 3, 8, 16, 16)
    assert target_of(clips, clips, torch.full((2,), 0.5), {"video": clips}) is clips
    batch = _laid_out_batch(range(2))
    with pytest.raises(ValueError, match="one-frame clips"):
        target_of(clips, clips, torch.full((2,), 0.5), {**batch, "video": clips})
    small = WorldPosteriorTarget(min_size=5, max_size=6)
    batch["layout"][0, 0, 2] = 7
    x0 = batch["video"]
    with pytest.raises(ValueError, match="outside this target's placements"):
        small(x0, x0, torch.full((2,), 0.5), batch)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        WorldPosteriorTarget(min_size=8, max_size=6)


def test_image_batches_carry_layouts_that_paint_their_frames() -> None:
    data = WorldDataModule(num_frames=4, batch_size=2, image_batch_size=3, image_batches=2, seed=5)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    image = next(loader)
    assert image["layout"].shape == (3, 2, 5) and image["background"].shape == (3, 3)
    for b in range(3):
        painted = _paint(image["layout"][b].numpy(), image["background"][b].numpy())
        np.testing.assert_array_equal(painted, image["video"][b, :, 0].numpy())
    next(loader)
    video = next(loader)
    assert "layout" not in video and video["video"].shape[2] == 4
