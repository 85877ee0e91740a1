"""Long-video metrics: visual stability, per-window Frechet quality, dynamic degree (sfpp.metrics)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
import torch

from sfpp.metrics.quality_curve import (
    FEATURE_NAMES,
    DynamicDegree,
    WindowQuality,
    feature_statistics,
    frame_features,
    frechet_distance,
)
from sfpp.metrics.stability import (
    COMPONENTS,
    DEFAULT_TOLERANCES,
    DriftTolerance,
    VisualStability,
    stability_breakdown,
    stability_curve,
    stability_scores,
)
from sfpp.utils.seeding import derive_seed
from sfpp.world import render, sample_spec, world_feature_statistics
from sfpp.world.scene import object_pixel_positions

Degrade = Callable[[np.ndarray, float], np.ndarray]

# -- degradations growing along the video (strength = amount at the last frame) -------------------


def _ramp(num_frames: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, num_frames)[None, :, None, None]  # (1, F, 1, 1)


def over_expose(video: np.ndarray, strength: float) -> np.ndarray:
    """Brightness added linearly along the video, ``strength`` at the last frame ([-1, 1] units)."""
    return np.clip(video + strength * _ramp(video.shape[1]), -1.0, 1.0).astype(np.float32)


def blur(video: np.ndarray, strength: float) -> np.ndarray:
    """Gaussian blur whose sigma grows linearly to ``strength`` pixels."""
    out = video.copy()
    for frame in range(video.shape[1]):
        sigma = strength * frame / (video.shape[1] - 1)
        if sigma > 0:
            for channel in range(3):
                out[channel, frame] = cv2.GaussianBlur(
                    video[channel, frame], (0, 0), sigma, borderType=cv2.BORDER_REFLECT
                )
    return out


def add_noise(video: np.ndarray, strength: float) -> np.ndarray:
    """Gaussian noise whose sigma grows linearly to ``strength`` ([-1, 1] units), seeded."""
    noise = np.random.default_rng(0).standard_normal(video.shape)
    return np.clip(video + strength * _ramp(video.shape[1]) * noise, -1.0, 1.0).astype(np.float32)


def freeze(video: np.ndarray, strength: float) -> np.ndarray:
    """The last ``strength`` fraction of the frames repeats the frame before it."""
    start = int(round((1.0 - strength) * video.shape[1]))
    out = video.copy()
    out[:, start:] = video[:, start - 1 : start]
    return out


def tint(video: np.ndarray, strength: float) -> np.ndarray:
    """A colour cast towards red (and away from blue) growing to ``strength``."""
    cast = np.asarray([1.0, 0.0, -1.0])[:, None, None, None] * strength * _ramp(video.shape[1])
    return np.clip(video + cast, -1.0, 1.0).astype(np.float32)


def flicker(video: np.ndarray, strength: float) -> np.ndarray:
    """Whole-frame brightness alternating by +-``strength`` from frame to frame: window means stay put."""
    sign = np.where(np.arange(video.shape[1]) % 2 == 0, 1.0, -1.0)[None, :, None, None]  # (1, F, 1, 1)
    return np.clip(video + strength * sign, -1.0, 1.0).astype(np.float32)


def jitter(video: np.ndarray, strength: float) -> np.ndarray:
    """Every frame shifted by a random offset of up to ``strength`` pixels in x and y (edges repeated), seeded."""
    shift = int(strength)
    rng = np.random.default_rng(0)
    padded = np.pad(video, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")
    out = np.empty_like(video)
    height, width = video.shape[2:]
    for frame in range(video.shape[1]):
        dy, dx = rng.integers(-shift, shift + 1, size=2) + shift
        out[:, frame] = padded[:, frame, dy : dy + height, dx : dx + width]
    return out


DEGRADATIONS: dict[str, tuple[Degrade, tuple[float, ...]]] = {
    "over_exposure": (over_expose, (0.25, 0.5, 1.0)),
    "blur": (blur, (0.75, 1.5, 3.0)),
    "noise": (add_noise, (0.1, 0.2, 0.4)),
    "freeze": (freeze, (0.25, 0.5, 0.75)),
    "flicker": (flicker, (0.03, 0.05, 0.1)),
    "jitter": (jitter, (1.0, 2.0, 3.0)),
}


# -- temporal failures that window means cannot see, from an onset on (none before it) ------------


def pulse(video: np.ndarray, strength: float, period: int, phase: int, colour=(1.0, 1.0, 1.0), length=1):
    """Every ``period`` frames from ``phase`` on, ``length`` frames pushed by ``strength`` towards ``colour``."""
    out = video.copy()
    push = strength * np.asarray(colour, dtype=np.float32)[:, None, None, None]  # (3, 1, 1, 1)
    for start in range(phase, video.shape[1], period):
        out[:, start : start + length] = np.clip(out[:, start : start + length] + push, -1.0, 1.0)
    return out


def back_and_forth(video: np.ndarray, strength: float) -> np.ndarray:
    """The whole frame moved ``strength`` pixels right for 2 frames, back for 2, and so on."""
    out = video.copy()
    for frame in range(2, video.shape[1], 4):
        out[:, frame : frame + 2] = np.roll(video[:, frame : frame + 2], int(strength), axis=3)
    return out


def repeated(video: np.ndarray, strength: float, onset: int = 32) -> np.ndarray:
    """From ``onset`` on, every frame shown ``strength`` times (the video slows down and stutters)."""
    index = np.arange(video.shape[1])
    index[onset:] = onset + (index[onset:] - onset) // int(strength)
    return video[:, index]


TEMPORAL_FAILURES: dict[str, tuple[Degrade, tuple[float, ...]]] = {
    # one frame in 8 brighter, on each window's first frame (the old window-bound triples missed it)
    "brightness_pulse": (lambda v, s: pulse(v, s, period=8, phase=0), (0.1, 0.2, 0.4)),
    "colour_pulse": (lambda v, s: pulse(v, s, period=12, phase=3, colour=(1.0, -1.0, -1.0)), (0.1, 0.2, 0.4)),
    "two_frame_pulse": (lambda v, s: pulse(v, s, period=16, phase=5, length=2), (0.1, 0.2, 0.4)),
    "back_and_forth": (back_and_forth, (2.0, 3.0)),
    "repetition": (repeated, (3.0, 4.0, 8.0)),
}


def _spec_of_kind(kind: str, first_seed: int):
    """The first sampled spec with the given background kind."""
    seed = first_seed
    while (spec := sample_spec(derive_seed(41, seed))).background.kind != kind:
        seed += 1
    return spec


@pytest.fixture(scope="module")
def test_videos() -> list[np.ndarray]:
    """One video per background kind, 128 frames."""
    return [render(_spec_of_kind(kind, 0), 128) for kind in ("dark", "changing")]


@pytest.fixture(scope="module")
def real_batch() -> np.ndarray:
    return np.stack(
        [render(sample_spec(derive_seed(77, index)), 64) for index in range(6)]
    )  # (6, 3, 64, 16, 16)


# -- visual stability ----------------------------------------------------------------------------


def test_real_videos_are_stable() -> None:
    lengths = (64, 96, 128, 200)
    specs = [sample_spec(derive_seed(123, index)) for index in range(8)]
    assert {spec.background.kind for spec in specs} == {"dark", "changing"}
    metric = VisualStability()
    for index, spec in enumerate(specs):
        metric.update(torch.from_numpy(render(spec, lengths[index % 4])[None]))
    per_video = metric.compute_per_video()
    assert set(per_video) == {"score", *COMPONENTS}
    assert per_video["score"].shape == (8,)
    assert per_video["score"].min() >= 90.0, per_video
    assert metric.compute() == pytest.approx(float(per_video["score"].mean()), abs=1e-4)


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_degradation_lowers_score_monotonically(name: str, test_videos: list[np.ndarray]) -> None:
    degrade, strengths = DEGRADATIONS[name]
    for video in test_videos:
        scores = [stability_scores(video)["score"]]
        scores += [stability_scores(degrade(video, strength))["score"] for strength in strengths]
        assert scores[0] >= 90.0
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), (name, scores)
        assert scores[-1] < 60.0, (name, scores)


@pytest.fixture(scope="module")
def other_videos() -> list[np.ndarray]:
    """Six videos the other tests do not use, 128 frames."""
    return [render(sample_spec(derive_seed(321, index)), 128) for index in range(6)]


@pytest.mark.parametrize("name", list(TEMPORAL_FAILURES))
def test_temporal_failure_lowers_score_monotonically(name: str, other_videos: list[np.ndarray]) -> None:
    degrade, strengths = TEMPORAL_FAILURES[name]
    for video in other_videos:
        scores = [stability_scores(video)["score"]]
        scores += [stability_scores(degrade(video, strength))["score"] for strength in strengths]
        assert scores[0] >= 99.0, (name, scores)
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), (name, scores)
        assert scores[-1] < 60.0, (name, scores)


def test_temporal_components_name_the_failure(other_videos: list[np.ndarray]) -> None:
    video = other_videos[0]
    assert stability_scores(pulse(video, 0.4, period=8, phase=7))["pulse"] < 20.0
    assert stability_scores(back_and_forth(video, 3.0))["shake"] < 60.0
    assert stability_scores(repeated(video, 8.0))["motion"] < 60.0
    # a pulse on a window's last frame costs as much as one on its first
    first, last = (stability_scores(pulse(video, 0.2, period=8, phase=p))["score"] for p in (0, 7))
    assert first == pytest.approx(last, abs=5.0)


def test_components_name_the_failure(test_videos: list[np.ndarray]) -> None:
    video = test_videos[1]
    assert stability_scores(freeze(video, 0.5))["motion"] < 60.0
    assert stability_scores(add_noise(video, 0.4))["noise"] < 60.0
    assert stability_scores(blur(video, 3.0))["detail"] < 60.0
    exposed = stability_scores(over_expose(video, 1.0))
    assert min(exposed["exposure"], exposed["saturation"]) < 60.0
    tinted = stability_scores(tint(video, 0.8))
    assert min(tinted["colour"], tinted["hue"]) < 90.0


def test_temporal_components_see_what_window_means_hide(test_videos: list[np.ndarray]) -> None:
    video = test_videos[0]
    for degraded, component in ((flicker(video, 0.1), "flicker"), (jitter(video, 2.0), "jitter")):
        scores = stability_scores(degraded)
        assert scores[component] < 80.0, (component, scores)
        # the drift components compare window means with the first window's: they see nothing
        assert min(scores[name] for name in ("exposure", "colour", "detail")) >= 95.0, (component, scores)
    # a still video has no jitter, a steady change (a brightness ramp) none either
    assert stability_scores(over_expose(video, 0.25))["jitter"] == pytest.approx(100.0)


def test_breakdown_multiplies_to_the_score_and_scores_one_window(test_videos: list[np.ndarray]) -> None:
    video = pulse(test_videos[0][:, :32], 0.3, period=8, phase=2)
    parts = stability_breakdown(video)
    assert set(parts) == {"score", *COMPONENTS} and parts["score"].shape == (4,)
    product = torch.stack([parts[name] / 100.0 for name in COMPONENTS]).prod(dim=0) * 100.0
    torch.testing.assert_close(parts["score"], product)
    assert float(parts["score"][1]) < 80.0 and float(parts["pulse"][1]) < 80.0
    one = stability_breakdown(torch.from_numpy(video[None, :, :8]))  # one window: its own reference
    assert one["score"].shape == (1, 1)
    assert float(one["score"][0, 0]) == pytest.approx(float(parts["score"][0]), abs=15.0)
    assert float(stability_breakdown(test_videos[0][:, :8])["score"][0]) == pytest.approx(100.0)


def test_frozen_from_the_start_scores_zero(test_videos: list[np.ndarray]) -> None:
    still = np.repeat(test_videos[0][:, :1], 64, axis=1)  # (3, 64, H, W)
    assert stability_scores(still)["score"] == pytest.approx(0.0)


def test_stability_curve(test_videos: list[np.ndarray]) -> None:
    video = test_videos[0]
    curve = stability_curve(video)
    assert curve.shape == (16,)
    assert curve[0] == 100.0
    assert curve.min() >= 90.0
    noisy = stability_curve(add_noise(video, 0.4))
    assert noisy[-1] < noisy[4] < noisy[0]
    batch = stability_curve(np.stack([video, add_noise(video, 0.4)]), window_frames=16)
    assert batch.shape == (2, 8)
    # the video score is the mean of the curve without the reference window
    assert stability_scores(video, window_frames=16)["score"] == pytest.approx(
        float(batch[0, 1:].mean()), abs=1e-3
    )


def test_drift_tolerance() -> None:
    tolerance = DriftTolerance(tolerance=0.1, scale=0.2)
    np.testing.assert_allclose(tolerance.penalty(np.asarray([0.0, 0.1, 0.2, 0.3, 1.0])), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="scale"):
        DriftTolerance(tolerance=0.1, scale=0.0)
    with pytest.raises(ValueError, match="tolerances"):
        VisualStability(tolerances={k: v for k, v in DEFAULT_TOLERANCES.items() if k != "hue"})


# -- per-window Frechet quality ------------------------------------------------------------------


def test_frechet_distance_known_values() -> None:
    mean, cov = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (1 - 0)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert frechet_distance(np.ones(1), np.eye(1), np.zeros(1), 4 * np.eye(1)) == pytest.approx(2.0)


def test_window_quality_real_beats_degraded(real_batch: np.ndarray) -> None:
    features = frame_features(real_batch[0])
    assert features.shape == (64, len(FEATURE_NAMES))
    curves = {}
    for name, (degrade, strengths) in {"real": (None, (0.0,)), **DEGRADATIONS}.items():
        videos = real_batch if degrade is None else np.stack([degrade(v, strengths[-1]) for v in real_batch])
        metric = WindowQuality(world_feature_statistics)
        metric.update(torch.from_numpy(videos))
        curves[name] = metric.compute()
        assert curves[name].shape == (8,)
    real_late = float(curves["real"][4:].mean())
    for name in DEGRADATIONS:
        assert float(curves[name][4:].mean()) > 1.2 * real_late, (name, curves)
        assert curves[name][-1] > curves["real"][-1]


def test_window_quality_parts_sum_to_the_curve_and_trace_a_drift(real_batch: np.ndarray) -> None:
    own = feature_statistics(list(real_batch))  # the batch is its own reference
    same = WindowQuality(own, window_frames=64)
    same.update(torch.from_numpy(real_batch))
    parts = same.parts()
    assert parts.mean_shift.shape == (1, len(FEATURE_NAMES))
    np.testing.assert_allclose(parts.mean_shift, 0.0, atol=1e-9)  # one window of all frames: no shift
    assert float(parts.mean_term[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(parts.distance[0]) == pytest.approx(float(same.compute().reshape(-1)[0]), abs=1e-5)

    dark = (real_batch + 1.0) * 0.6 - 1.0  # every pixel 40 % darker
    metric = WindowQuality(own, window_frames=16)
    metric.update(torch.from_numpy(dark))
    parts = metric.parts()
    assert parts.mean_shift.shape == (4, len(FEATURE_NAMES))
    np.testing.assert_allclose(parts.distance, metric.compute().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(parts.mean_term, (parts.mean_shift**2).sum(axis=1), rtol=1e-12)
    assert np.all(parts.cov_term >= -1e-9)
    # parity with the definition: the window's mean feature minus the real mean, over the floored std
    features = np.stack([frame_features(video) for video in dark])[:, 16:32]  # (B, 16, D)
    expected = (features.reshape(-1, len(FEATURE_NAMES)).mean(axis=0) - own.mean) / np.maximum(own.std, 0.02)
    np.testing.assert_allclose(parts.mean_shift[1], expected, rtol=1e-9, atol=1e-12)
    luma = [FEATURE_NAMES.index(name) for name in ("luma_mean", "luma_median")]
    assert np.all(parts.mean_shift[:, luma] < -1.0)  # darker frames: both luma features fall
    with pytest.raises(ValueError, match="no videos"):
        WindowQuality(own).parts()


# -- dynamic degree ------------------------------------------------------------------------------


def test_dynamic_degree_frozen_and_real() -> None:
    spec = sample_spec(derive_seed(5, 1))
    video = render(spec, 96)
    metric = DynamicDegree()
    metric.update(torch.from_numpy(video[None]))
    result = metric.compute()
    # ground truth: the pixel step of the fastest object per frame pair
    steps = np.stack(
        [
            np.linalg.norm(np.diff(object_pixel_positions(obj, 16, np.arange(96)), axis=0), axis=1)
            for obj in spec.objects
        ]
    ).max(axis=0)  # (F-1,)
    assert float(result["dynamic_degree"]) == pytest.approx(steps.mean(), rel=0.15)
    assert float(result["moving_fraction"]) == pytest.approx(np.mean(steps > 0), abs=0.1)

    frozen = DynamicDegree()
    frozen.update(torch.from_numpy(np.repeat(video[None, :, :1], 32, axis=2)))
    assert float(frozen.compute()["dynamic_degree"]) < 0.02
    assert float(frozen.compute()["moving_fraction"]) == 0.0


# -- torchmetrics accumulation and input checks ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("metric_class", [VisualStability, WindowQuality, DynamicDegree])
def test_two_updates_equal_one(metric_class: type, real_batch: np.ndarray) -> None:
    videos = torch.from_numpy(real_batch[:4, :, :32])
    make = (
        (lambda: WindowQuality(world_feature_statistics)) if metric_class is WindowQuality else metric_class
    )
    split, joined = make(), make()
    split.update(videos[:1])
    split.update(videos[1:])
    joined.update(videos)
    torch.testing.assert_close(split.compute(), joined.compute())
    split.reset()
    with pytest.raises(ValueError, match="update"):
        split.compute()


def test_bad_inputs_raise() -> None:
    video = torch.zeros(3, 32, 16, 16)
    for metric in (VisualStability(), WindowQuality(world_feature_statistics), DynamicDegree()):
        with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
            metric.update(video)  # a single video without the batch dimension
        with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
            metric.update(torch.zeros(1, 4, 32, 16, 16))
        with pytest.raises(ValueError, match="NaN"):
            metric.update(torch.full((1, 3, 32, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="at least 16 frames"):
        VisualStability(window_frames=8).update(torch.zeros(1, 3, 12, 16, 16))
    with pytest.raises(ValueError, match="window_frames"):
        VisualStability(window_frames=1)
    with pytest.raises(ValueError, match=r"one RGB video \(3, F, H, W\)"):
        stability_scores(torch.zeros(2, 3, 32, 16, 16))
    with pytest.raises(ValueError, match="at least 2 frames"):
        DynamicDegree().update(torch.zeros(1, 3, 1, 16, 16))
    quality = WindowQuality(world_feature_statistics)
    quality.update(torch.zeros(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="same length"):
        quality.update(torch.zeros(1, 3, 24, 16, 16))
