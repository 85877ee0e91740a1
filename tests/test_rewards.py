"""Tests of the reward interface and the optical-flow continuity reward, on videos of the built-in world."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfpp.rewards import ContinuityTerms, FlowContinuityReward, Reward, WeightedSum, render_flow
from sfpp.world import DEFAULT_WORLD, VideoSpec, prompt_of, render, sample_spec, spec_from_prompt
from sfpp.world.scene import object_pixel_positions

NUM_FRAMES = 32
MIDDLE = NUM_FRAMES // 2
SKIPPED_FRAMES = 8  # the jump skips this many frames
FROZEN_FRAMES = 9  # the freeze shows one frame this many times (8 repeats)
MIN_GAP = 0.03  # smallest score gap asserted between a smooth video and its broken version
MEAN_GAP = 0.1  # and between their means over the specs (measured: cut 0.19, jump 0.16, frozen 0.28)

SPECS: list[VideoSpec] = [sample_spec(seed) for seed in range(6)] + [
    spec_from_prompt("a red circle bouncing on a dark background", seed=7),
    spec_from_prompt("a green triangle and a blue square bouncing on a slowly changing background", seed=3),
]
VARIANTS = ("smooth", "cut", "jump", "frozen", "constant")


def _tensor(frames: np.ndarray) -> torch.Tensor:
    """World frames ``(3, F, H, W)`` in ``[-1, 1]`` as a float32 tensor."""
    assert frames.shape == (3, NUM_FRAMES, DEFAULT_WORLD.frame_size, DEFAULT_WORLD.frame_size)
    assert frames.min() >= -1.0 and frames.max() <= 1.0
    return torch.from_numpy(frames)


def _variants(index: int, spec: VideoSpec) -> dict[str, torch.Tensor]:
    """The smooth ground-truth video of ``spec`` and broken versions of it, all ``(3, F, 16, 16)``."""
    smooth = render(spec, NUM_FRAMES)  # (3, F, H, W)
    longer = render(spec, NUM_FRAMES + SKIPPED_FRAMES)  # (3, F + 8, H, W)
    other = render(sample_spec(1000 + index), NUM_FRAMES)  # a different video
    held = np.repeat(smooth[:, MIDDLE - 4 : MIDDLE - 3], FROZEN_FRAMES, axis=1)  # (3, 9, H, W)
    return {
        "smooth": _tensor(smooth),
        # second half replaced by another video: a cut
        "cut": _tensor(np.concatenate([smooth[:, :MIDDLE], other[:, MIDDLE:]], axis=1)),
        # frames MIDDLE .. MIDDLE + 7 left out: the objects teleport
        "jump": _tensor(np.concatenate([longer[:, :MIDDLE], longer[:, MIDDLE + SKIPPED_FRAMES :]], axis=1)),
        # a pause: one frame held for 9 frames, then the motion resumes where it stopped (no jump)
        "frozen": _tensor(
            np.concatenate(
                [smooth[:, : MIDDLE - 4], held, smooth[:, MIDDLE - 3 : NUM_FRAMES - FROZEN_FRAMES + 1]],
                axis=1,
            )
        ),
        "constant": _tensor(np.repeat(smooth[:, :1], NUM_FRAMES, axis=1)),
    }


@pytest.fixture(scope="module")
def reward() -> FlowContinuityReward:
    return FlowContinuityReward()


@pytest.fixture(scope="module")
def videos() -> dict[str, torch.Tensor]:
    """Every variant batched over the specs: name -> ``(N, 3, F, 16, 16)``."""
    per_spec = [_variants(index, spec) for index, spec in enumerate(SPECS)]
    return {name: torch.stack([variants[name] for variants in per_spec]) for name in VARIANTS}


@pytest.fixture(scope="module")
def scores(reward: FlowContinuityReward, videos: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batched scores: name -> ``(N,)``."""
    prompts = [prompt_of(spec) for spec in SPECS]
    return {name: reward(batch, prompts) for name, batch in videos.items()}


# -- the continuity reward separates smooth videos from broken ones ----------------------------


def test_jump_moves_objects_visibly() -> None:
    # precondition of the jump test: some object teleports by at least 2 px
    for spec in SPECS:
        before = [
            object_pixel_positions(obj, spec.frame_size, np.array([MIDDLE - 1])) for obj in spec.objects
        ]
        after = [
            object_pixel_positions(obj, spec.frame_size, np.array([MIDDLE + SKIPPED_FRAMES]))
            for obj in spec.objects
        ]
        assert max(int(np.abs(b - a).max()) for b, a in zip(before, after, strict=True)) >= 2


def test_smooth_videos_score_high(scores: dict[str, torch.Tensor]) -> None:
    smooth = scores["smooth"]
    assert smooth.dtype == torch.float32 and smooth.shape == (len(SPECS),)
    assert float(smooth.min()) > 0.7
    assert float(smooth.max()) <= 1.0


@pytest.mark.parametrize("broken", ["cut", "jump", "frozen"])
def test_smooth_beats_broken(scores: dict[str, torch.Tensor], broken: str) -> None:
    gaps = scores["smooth"] - scores[broken]  # (N,)
    assert float(gaps.min()) > MIN_GAP, (
        f"smooth vs {broken}: {scores['smooth'].tolist()} vs {scores[broken].tolist()}"
    )
    assert float(gaps.mean()) > MEAN_GAP


def test_constant_video_gets_the_worst_score(scores: dict[str, torch.Tensor]) -> None:
    assert torch.equal(scores["constant"], torch.zeros(len(SPECS)))
    for name in ("smooth", "cut", "jump", "frozen"):
        assert bool((scores[name] > scores["constant"]).all())


def test_terms_explain_the_scores(reward: FlowContinuityReward, videos: dict[str, torch.Tensor]) -> None:
    terms = {name: reward.terms(batch[0]) for name, batch in videos.items()}
    assert isinstance(terms["smooth"], ContinuityTerms)
    assert terms["smooth"].magnitudes.shape == (NUM_FRAMES - 1,)
    assert terms["smooth"].window_magnitudes.shape == (NUM_FRAMES - 1 - reward.window_pairs + 1,)
    assert terms["smooth"].changes.shape == (NUM_FRAMES - 1 - reward.window_pairs,)
    assert terms["smooth"].frozen_fraction == 0.0
    # the cut is a pair that the flow cannot explain, exactly where it was inserted
    assert int(np.argmax(terms["cut"].residuals)) == MIDDLE - 1
    assert terms["cut"].cut_penalties.max() > terms["smooth"].cut_penalties.max() + 0.1
    # the pause is found as frozen windows; the constant video is frozen throughout
    assert terms["frozen"].frozen_fraction > 0.1
    assert terms["constant"].frozen_fraction == 1.0
    for item in terms.values():
        expected = (1.0 - item.discontinuity) * (1.0 - item.frozen_fraction)
        assert item.score == pytest.approx(expected)
        assert 0.0 <= item.discontinuity <= 1.0


def test_score_is_deterministic_and_ignores_the_prompt(
    reward: FlowContinuityReward, videos: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]
) -> None:
    again = reward(videos["jump"], ["a red circle bouncing on a dark background"] * len(SPECS))
    assert torch.equal(again, scores["jump"])


def test_batched_call_equals_per_video_calls(
    reward: FlowContinuityReward, videos: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]
) -> None:
    mixed = torch.stack([videos["smooth"][0], videos["cut"][1], videos["frozen"][2]])  # (3, 3, F, H, W)
    batched = reward(mixed, ["a", "b", "c"])
    singles = torch.cat([reward(video[None], ["x"]) for video in mixed])  # (3,)
    assert torch.equal(batched, singles)
    expected = [scores["smooth"][0], scores["cut"][1], scores["frozen"][2]]
    assert batched.tolist() == pytest.approx([float(value) for value in expected], abs=1e-6)
    assert reward.score_video(mixed[1], "b") == pytest.approx(float(batched[1]), abs=1e-6)


def test_other_dtypes_and_short_videos(reward: FlowContinuityReward, videos: dict[str, torch.Tensor]) -> None:
    smooth = videos["smooth"][:2]  # (2, 3, F, H, W)
    assert torch.allclose(reward(smooth.double(), ["a", "b"]), reward(smooth, ["a", "b"]))
    two_frames = reward(smooth[:, :, :2], ["a", "b"])  # the shortest video the reward accepts
    assert two_frames.shape == (2,) and bool(((two_frames >= 0) & (two_frames <= 1)).all())


def test_bad_inputs_raise(reward: FlowContinuityReward, videos: dict[str, torch.Tensor]) -> None:
    batch = videos["smooth"][:2]  # (2, 3, F, H, W)
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        reward(batch[0], ["a"])  # one video without the batch axis
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        reward(batch[:, :1], ["a", "b"])  # one channel
    with pytest.raises(ValueError, match="at least 2 frames"):
        reward(batch[:, :, :1], ["a", "b"])
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        reward(batch, ["a"])
    with pytest.raises(ValueError, match="sequence of strings"):
        reward(batch, "ab")
    with pytest.raises(ValueError, match="torch.Tensor"):
        reward(batch.numpy(), ["a", "b"])


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("window_pairs", 0),
        ("residual_scale", 0.0),
        ("spike_weight", 1.5),
        ("min_motion_px", -1.0),
        ("upscale", 0),
    ],
)
def test_invalid_settings_raise(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        FlowContinuityReward(**{setting: value})
    with pytest.raises(ValueError, match="method"):
        FlowContinuityReward(method="raft")


def test_render_flow(videos: dict[str, torch.Tensor]) -> None:
    smooth = videos["smooth"][0]
    images = render_flow(smooth)
    assert images.shape == (NUM_FRAMES - 1, 16, 16, 3) and images.dtype == np.uint8
    assert images.min() < 200  # moving objects are coloured
    per_frame = render_flow(smooth, per_frame_scale=True)
    assert per_frame.shape == images.shape and per_frame.dtype == np.uint8
    # no motion is white in the flow colour wheel
    assert int(render_flow(videos["constant"][0]).min()) == 255
    # a frozen stretch renders white between the moving frames
    frozen = render_flow(videos["frozen"][0])
    assert int(frozen[MIDDLE - 4 : MIDDLE - 4 + FROZEN_FRAMES - 1].min()) == 255
    assert int(frozen.min()) < 200


# -- the interface and the combinator ------------------------------------------------------------


class MeanBrightness(Reward):
    """Mean pixel value of a video, in ``[-1, 1]``."""

    def score_video(self, video: torch.Tensor, prompt: str) -> float:
        return float(video.mean())


class PromptLength(Reward):
    """Number of characters of the prompt (a batch reward)."""

    def score_batch(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([float(len(prompt)) for prompt in prompts])


def _grey_videos(levels: list[float]) -> torch.Tensor:
    """Uniform grey videos ``(B, 3, 4, 8, 8)``, one level each."""
    return torch.tensor(levels).view(-1, 1, 1, 1, 1).expand(-1, 3, 4, 8, 8).contiguous()  # (B, 3, 4, 8, 8)


def test_subclass_scores_and_output_checks() -> None:
    scores = MeanBrightness()(_grey_videos([-0.5, 0.25]), ["a", "b"])
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert scores.tolist() == pytest.approx([-0.5, 0.25])

    class Unfinished(Reward):
        pass

    with pytest.raises(TypeError, match="score_video"):
        Unfinished()

    class WrongShape(Reward):
        def score_batch(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            return torch.zeros(len(prompts) + 1)

    with pytest.raises(RuntimeError, match="one score per video"):
        WrongShape()(_grey_videos([0.0]), ["a"])

    class NotFinite(Reward):
        def score_video(self, video: torch.Tensor, prompt: str) -> float:
            return math.nan

    with pytest.raises(RuntimeError, match="non-finite"):
        NotFinite()(_grey_videos([0.0]), ["a"])


def test_weighted_sum() -> None:
    combined = WeightedSum([MeanBrightness(), PromptLength()], weights=[2.0, -0.5])
    videos = _grey_videos([0.5, -1.0])
    prompts = ["abcd", "ab"]
    components = combined.component_scores(videos, prompts)
    assert components.shape == (2, 2)
    assert components.tolist() == [pytest.approx([0.5, -1.0]), pytest.approx([4.0, 2.0])]
    # 2 * 0.5 - 0.5 * 4 = -1 and 2 * -1 - 0.5 * 2 = -3
    assert combined(videos, prompts).tolist() == pytest.approx([-1.0, -3.0])
    assert combined.min_frames == 1
    assert WeightedSum([FlowContinuityReward(), MeanBrightness()], [1.0, 1.0]).min_frames == 2


def test_weighted_sum_of_continuity(videos: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]) -> None:
    doubled = WeightedSum([FlowContinuityReward()], [2.0])(videos["cut"], ["p"] * len(SPECS))
    assert torch.allclose(doubled, 2.0 * scores["cut"])


def test_weighted_sum_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([], [])
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        WeightedSum([MeanBrightness(), PromptLength()], [1.0])
    with pytest.raises(ValueError, match="finite"):
        WeightedSum([MeanBrightness()], [math.inf])
    with pytest.raises(ValueError, match="Reward"):
        WeightedSum([lambda videos, prompts: videos], [1.0])  # type: ignore[list-item]
