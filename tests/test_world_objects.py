"""The world's object-level quality metric (sfpp.world.objects)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from sfpp.world import (
    PALETTE,
    SHAPES,
    BackgroundSpec,
    ObjectSpec,
    VideoSpec,
    WorldObjectScore,
    WorldSpec,
    classify_shape,
    fit_shape_thresholds,
    prompt_of,
    render,
    sample_spec,
    score_videos,
    shape_mask,
)


def _real_batch(num_videos: int, num_frames: int, first_seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    specs = [sample_spec(first_seed + i) for i in range(num_videos)]
    videos = np.stack([render(spec, num_frames) for spec in specs])  # (B, 3, F, H, W)
    return torch.from_numpy(videos), [prompt_of(spec) for spec in specs]


@pytest.fixture(scope="module")
def real() -> tuple[torch.Tensor, list[str]]:
    return _real_batch(64, 8)


@pytest.fixture(scope="module")
def score() -> WorldObjectScore:
    return WorldObjectScore()


def _blur(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    frames = videos.permute(0, 2, 3, 4, 1).numpy()  # (B, F, H, W, 3)
    b, f, h, w, c = frames.shape
    flat = frames.reshape(b * f, h, w, c)  # (B * F, H, W, 3)
    blurred = np.stack([cv2.GaussianBlur(x, (0, 0), sigma) for x in flat])
    blurred = blurred.reshape(b, f, h, w, c)  # (B, F, H, W, 3)
    return torch.from_numpy(blurred).permute(0, 4, 1, 2, 3)  # (B, 3, F, H, W)


def _crossing_spec() -> VideoSpec:
    """A red square passing in front of (and fully hiding) a smaller blue circle."""
    return VideoSpec(
        objects=(
            ObjectSpec("square", "red", 7, (0.0, 5.0), (0.5, 0.0)),
            ObjectSpec("circle", "blue", 5, (11.0, 6.0), (-0.5, 0.0)),
        ),
        background=BackgroundSpec("dark", (-0.8, -0.8, -0.8)),
    )


def test_shape_thresholds_classify_every_rendered_mask() -> None:
    for low, high in [(5, 7), (3, 12)]:
        thresholds = fit_shape_thresholds(low, high)
        for size in range(low, high + 1):
            for shape in SHAPES:
                rows, cols = np.nonzero(shape_mask(shape, size))
                top, height, width = rows.min(), np.ptp(rows) + 1, np.ptp(cols) + 1
                assert classify_shape(rows.size, top, height, width, rows.mean(), thresholds) == shape
    default = fit_shape_thresholds(5, 7)
    assert 0.03 < default.triangle_offset < 0.1 and 0.85 < default.square_fill < 0.98


def test_real_videos_are_clean_and_correctly_shaped(score: WorldObjectScore, real) -> None:
    result = score(*real)
    assert result["clean_frame_fraction"] >= 0.99  # measured 1.0
    assert result["detected_fraction"] >= 0.99
    assert result["shape_accuracy"] >= 0.99  # measured 1.0
    assert result["jump_fraction"] == 0.0
    assert result["frozen_fraction"] <= 0.1  # measured ~0.01-0.02 (slow diagonal objects round to still)
    assert 0.3 <= result["mean_motion_px"] <= 1.0  # speeds 0.25-0.75 px/frame plus rounding


def test_long_real_videos_stay_clean(score: WorldObjectScore) -> None:
    videos, prompts = _real_batch(8, 300, first_seed=100)
    assert score(videos, prompts)["clean_frame_fraction"] == 1.0


def test_occlusion_and_full_hiding_are_clean(score: WorldObjectScore) -> None:
    spec = _crossing_spec()
    video = render(spec, 24)
    blue = (video == np.asarray(PALETTE["blue"], dtype=np.float32)[:, None, None, None]).all(axis=0)
    assert (blue.sum(axis=(1, 2)) == 0).sum() >= 2  # the circle is completely hidden for a while
    result = score.score_video(video, prompt_of(spec))
    assert result["clean_frame_fraction"] == 1.0
    assert result["shape_accuracy"] == 1.0


def test_a_flickering_back_object_is_not_clean(score: WorldObjectScore) -> None:
    spec = _crossing_spec()
    video = render(spec, 24)
    blue = (video == np.asarray(PALETTE["blue"], dtype=np.float32)[:, None, None, None]).all(axis=0)
    video[:, 1][:, blue[1]] = -0.8  # erase the circle in frame 1, where nothing covers it
    stats = score.video_stats(video[None], [prompt_of(spec)])[0]
    assert stats.clean_per_frame[1] is False
    assert sum(stats.clean_per_frame) == 23


def test_noise_scores_low(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    generator = torch.Generator().manual_seed(0)
    uniform = torch.rand(videos.shape, generator=generator) * 2 - 1
    assert score(uniform, prompts)["clean_frame_fraction"] < 0.05  # measured 0.0
    noisy = (videos + 0.5 * torch.randn(videos.shape, generator=generator)).clamp(-1, 1)
    assert score(noisy, prompts)["clean_frame_fraction"] < 0.3  # measured ~0.19


def test_degraded_videos_score_low(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    assert score(_blur(videos, 1.0), prompts)["clean_frame_fraction"] < 0.3  # measured ~0.14
    hue_rotated = videos[:, [2, 0, 1]]  # every palette colour becomes another palette colour
    assert score(hue_rotated, prompts)["clean_frame_fraction"] < 0.05
    faded = (videos + 1) * 0.5 - 1  # objects at half brightness
    assert score(faded, prompts)["clean_frame_fraction"] == 0.0
    wrong_prompts = prompts[1:] + prompts[:1]
    assert score(videos, wrong_prompts)["clean_frame_fraction"] < 0.1


def test_stray_pixels_and_extra_blobs() -> None:
    score = WorldObjectScore(max_stray_pixels=2)
    spec = VideoSpec(
        objects=(ObjectSpec("triangle", "green", 6, (1.0, 1.0), (0.4, 0.3)),),
        background=BackgroundSpec("dark", (-0.8, -0.8, -0.8)),
    )
    prompt = prompt_of(spec)
    video = render(spec, 4)
    magenta = torch.tensor(PALETTE["magenta"])
    two_strays = torch.from_numpy(video.copy())
    two_strays[:, :, 14, 14] = magenta[:, None]
    two_strays[:, :, 0, 15] = magenta[:, None]
    assert score.score_video(two_strays, prompt)["clean_frame_fraction"] == 1.0
    blob = torch.from_numpy(video.copy())
    blob[:, :, 12:15, 12:15] = magenta[:, None, None, None]
    assert score.score_video(blob, prompt)["clean_frame_fraction"] == 0.0
    second_copy = torch.from_numpy(video.copy())
    second_copy[:, :, 10:16, 10:16] = torch.tensor(PALETTE["green"])[:, None, None, None]
    assert score.score_video(second_copy, prompt)["clean_frame_fraction"] == 0.0


def test_frozen_video_is_frozen_and_real_videos_move(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    frozen = videos[:, :, :1].expand_as(videos).contiguous()
    result = score(frozen, prompts)
    assert result["frozen_fraction"] == 1.0
    assert result["mean_motion_px"] == 0.0
    assert result["clean_frame_fraction"] == 1.0  # frozen but clean: the two numbers are separate
    assert score(videos, prompts)["frozen_fraction"] <= 0.1


def test_jumping_objects_are_counted(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    shuffled = videos[:, :, torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])]
    shuffled_result = score(shuffled, prompts)
    assert shuffled_result["mean_motion_px"] > score(videos, prompts)["mean_motion_px"]
    teleport = videos.clone()
    teleport[:, :, 4:] = torch.flip(videos[:, :, 4:], dims=(-1, -2))  # objects jump to the mirror spot
    assert score(teleport, prompts)["jump_fraction"] > 0.0


def test_per_video_stats_add_up_to_the_batch(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    per_video = score.video_stats(videos[:4], prompts[:4])
    total = score.batch_stats(videos[:4], prompts[:4])
    assert total.num_frames == 32 == sum(s.num_frames for s in per_video)
    assert total.clean_frames == sum(s.clean_frames for s in per_video)
    assert score.score_video(videos[0], prompts[0]) == per_video[0].scores()
    assert score_videos(videos[:4], prompts[:4]) == total.scores()


def test_nothing_to_count_gives_nan_not_an_error(score: WorldObjectScore) -> None:
    black = -torch.ones(2, 3, 4, 16, 16)
    result = score(black, ["a red circle bouncing on a dark background"] * 2)
    assert result["clean_frame_fraction"] == 0.0
    assert np.isnan(result["shape_accuracy"]) and np.isnan(result["frozen_fraction"])


def test_input_errors(score: WorldObjectScore, real) -> None:
    videos, prompts = real
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        score(videos[:, :2], prompts)
    with pytest.raises(ValueError, match="one prompt per video"):
        score(videos, prompts[:3])
    with pytest.raises(ValueError, match="colour_threshold"):
        WorldObjectScore(colour_threshold=1.5)


def test_other_world_sizes() -> None:
    world = WorldSpec(frame_size=12, min_size=5, max_size=6)
    specs = [sample_spec(seed, world) for seed in range(16)]
    videos = torch.from_numpy(np.stack([render(spec, 8) for spec in specs]))
    result = WorldObjectScore(world)(videos, [prompt_of(spec) for spec in specs])
    assert result["clean_frame_fraction"] >= 0.99 and result["shape_accuracy"] >= 0.99


def test_scoring_is_fast(score: WorldObjectScore, real) -> None:
    start = time.perf_counter()
    score(*real)
    assert time.perf_counter() - start < 1.5  # measured ~0.05 s for 64 videos x 8 frames


def _still_square(prompted_shape: str, position: tuple[float, float]) -> tuple[torch.Tensor, str]:
    """A still red 6 px square, four frames, prompted as a red ``prompted_shape``."""
    spec = VideoSpec(
        objects=(ObjectSpec("square", "red", 6, position, (0.0, 0.0)),),
        background=BackgroundSpec("dark", (-0.8, -0.8, -0.8)),
    )
    prompt = f"a red {prompted_shape} bouncing on a dark background"
    return torch.from_numpy(render(spec, 4)), prompt


def test_grid_alignment_counts_box_edges_on_the_patch_grid() -> None:
    # Box rows 6..12 and columns 0..6: on a 3 px grid all four edges, on a 4 px grid 12 and 0 only.
    video, prompt = _still_square("square", (0.0, 6.0))
    assert WorldObjectScore(grid_px=3).score_video(video, prompt)["grid_aligned_fraction"] == 1.0
    assert WorldObjectScore(grid_px=4).score_video(video, prompt)["grid_aligned_fraction"] == 0.5
    shifted, _ = _still_square("square", (1.0, 7.0))  # rows 7..13, columns 1..7: none on the 4 px grid
    assert WorldObjectScore(grid_px=4).score_video(shifted, prompt)["grid_aligned_fraction"] == 0.0


def test_real_objects_sit_on_the_patch_grid_by_chance_only(real, score) -> None:
    videos, prompts = real
    aligned = score(videos, prompts)["grid_aligned_fraction"]
    assert 0.15 < aligned < 0.4  # 1/4 for objects placed anywhere; measured 0.27


def test_shape_confusion_counts_what_was_drawn_for_each_prompted_shape(score) -> None:
    as_circle, circle_prompt = _still_square("circle", (3.0, 3.0))
    as_square, square_prompt = _still_square("square", (3.0, 3.0))
    stats = score.batch_stats(torch.stack([as_circle, as_square]), [circle_prompt, square_prompt])
    confusion = stats.confusion()
    assert confusion["circle"] == {"circle": 0, "square": 4, "triangle": 0}
    assert confusion["square"] == {"circle": 0, "square": 4, "triangle": 0}
    assert confusion["triangle"] == {"circle": 0, "square": 0, "triangle": 0}
    assert sum(sum(row.values()) for row in confusion.values()) == stats.classified_objects == 8
    assert stats.scores()["shape_accuracy"] == 0.5


def test_real_videos_confusion_is_diagonal(real, score) -> None:
    videos, prompts = real
    confusion = score.batch_stats(videos, prompts).confusion()
    for prompted, row in confusion.items():
        assert row[prompted] > 0
        assert all(count == 0 for found, count in row.items() if found != prompted)


def test_grid_px_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="grid_px"):
        WorldObjectScore(grid_px=1)
