"""Visual stability of long videos, computed locally: exposure drift, error accumulation, frozen motion.

The Self-Forcing++ paper rates the *visual stability* of a long video with an MLLM (0-5 rubric mapped
to 0-100) because frame-wise scores such as VBench's favour over-exposed and degraded frames. This
module measures the same failures directly, without weights, relative to the video's own first
window: a video that starts well and then drifts is unstable, a video that keeps looking like its
own beginning is stable. (:mod:`sfpp.metrics.quality_curve` compares windows with real clips instead.)

A video ``(3, F, H, W)`` in ``[-1, 1]`` is cut into ``K = F // window_frames`` non-overlapping
windows (a trailing partial window is dropped; ``K >= 2`` is required). Colours are used in
``[0, 1]``; luma is ``Y = 0.299 R + 0.587 G + 0.114 B`` and chroma ``C = max(R, G, B) - min(R, G, B)``.
Per window ``k`` a statistic is measured for each component and its drift ``d_k`` from window 0 is
taken (means over the window's frames, or over its ``window_frames - 1`` frame pairs):

- ``exposure``: mean luma ``Y_k``; ``d = |Y_k - Y_0|``.
- ``saturation``: 97th percentile of chroma ``C_k`` (how colourful the objects are);
  ``d = |C_k - C_0|``.
- ``detail``: edge strength ``E_k`` (:func:`edge_strength`: mean of the top 3 % neighbour
  differences); ``d = max(0, 1 - E_k / E_0)``.
- ``noise``: noise sigma ``N_k`` (:func:`noise_level`: 25th percentile of the absolute Immerkaer
  residual, zero on flat and planar regions); ``d = max(0, N_k - N_0)``.
- ``colour``: mean RGB colour ``M_k``; ``d = ||M_k - M_0||_2``.
- ``hue``: chroma-weighted hue histogram ``H_k`` (36 bins, pixels with ``C > 0.3``);
  ``d = sum_b H_k(b) * dist(b, reference hues)`` in turns, the reference hues being those of window
  0 plus hues that appear far from every hue seen before (an object coming out from behind another;
  see :func:`component_drifts`).
- ``motion``: ``V_k``, the mean over frame pairs of the top 3 % optical-flow magnitudes
  (:func:`motion_magnitudes`, px/frame, on a colour-contrast image so that it ignores exposure);
  ``d = max(0, 1 - V_k / max(V_0, motion_floor))``.

Four temporal components look at consecutive frames (:mod:`sfpp.metrics.temporal`); each value
belongs to the window of its centre frame but uses the neighbouring frames wherever they are, so a
failure on a window's first or last frame counts like any other. They are absolute (a real video's
level is the tolerance, whatever the video's first window does):

- ``flicker``: the window mean of ``||M_{t+1} - 2 M_t + M_{t-1}||_2``, the second difference of the
  frames' mean RGB colours ``M_t``: brightness or colour oscillating from frame to frame (steady
  drifts and moving objects change ``M_t`` smoothly and cost little); ``d = F_k``.
- ``pulse``: the window's largest amount by which a frame, or a run of two frames, stands out in
  mean colour from both neighbours in the same direction: a brightness or colour pulse, however
  rarely it comes (one frame in eight weighs as much as every other frame); ``d = P_k``.
- ``jitter``: the change that comes back, ``J_k = mean_t (D(t-1, t) + D(t, t+1) - D(t-1, t+1)) / 2``
  over the window's centre frames, with ``D`` the mean absolute difference of two frames (``[0, 1]``
  RGB): zero when the video keeps changing the same way (motion that goes on, a steady drift),
  as large as the change itself when frames go back and forth (random shaking, alternating content,
  grain that changes every frame); ``d = J_k``.
- ``shake``: the window mean of the back-and-forth of the whole frame: the integer translation that
  best maps each frame onto the next, and around each frame pair (4 pairs each side) the path of
  those translations minus their net displacement, halved, per pair; ``d = S_k`` (px per pair).
  A frame moved back and forth every few frames walks a path without getting anywhere; objects
  moving on walk as far as their path.

Window means cannot see any of them: a video can flicker, pulse or shake while every window average
stays put. Consecutive identical frames are not penalised as such: in the built-in world they are
part of real videos (an object slower than 1 px/frame moves one pixel every few frames; up to 66 %
of a real video's frame pairs are identical), so a repetition is seen when it slows the motion
(``motion``) and a freeze when it lasts (``motion`` again).

``exposure`` and ``saturation`` detect over-exposure; ``detail``, ``noise``, ``colour`` and ``hue``
detect error accumulation (loss of detail, noise, colour drift); ``motion`` detects frozen motion
(the floor makes a video frozen from its first window score 0); ``flicker``, ``pulse``, ``jitter``
and ``shake`` detect temporal inconsistency. Each drift becomes a penalty

    ``p_c,k = clip((d_c,k - tolerance_c) / scale_c, 0, 1)``

with a tolerance just above the largest drift real videos of the built-in world show and a scale at
which the failure is total (:data:`DEFAULT_TOLERANCES` gives the values and where they come from).
The window score and the video score are

    ``s_k = 100 * prod_c (1 - p_c,k)``,        ``S = mean_{k >= 1} s_k``,

and the per-component breakdown is ``100 * mean_{k >= 1} (1 - p_c,k)``; ``s_0 = 100`` unless the first
window is already frozen. The scale is 0-100 like the
paper's; a failure that grows along the video lowers the later windows more, so ``S`` falls
steadily with its strength and onset. :class:`VisualStability` averages ``S`` over videos and
:func:`stability_curve` gives ``s_k`` along a video.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sfpp.metrics.frame_stats import (
    _check_window_frames,
    as_single_video,
    as_video_batch,
    edge_strength,
    hue_turns,
    luma_chroma,
    motion_magnitudes,
    noise_level,
    to_unit_rgb,
)
from sfpp.metrics.temporal import (
    back_and_forth,
    colour_flicker,
    colour_pulses,
    frame_colours,
    frame_returns,
    global_shifts,
    per_window,
)

__all__ = [
    "COMPONENTS",
    "DEFAULT_TOLERANCES",
    "DriftTolerance",
    "VisualStability",
    "WindowStatistics",
    "component_drifts",
    "component_penalties",
    "stability_breakdown",
    "stability_curve",
    "stability_scores",
    "window_statistics",
]

#: The penalised components, in the order of :class:`VisualStability`'s breakdown.
COMPONENTS: tuple[str, ...] = (
    "exposure",
    "saturation",
    "detail",
    "noise",
    "colour",
    "hue",
    "motion",
    "flicker",
    "pulse",
    "jitter",
    "shake",
)

_HUE_BINS = 36
_HUE_MIN_CHROMA = 0.3
_HUE_SUPPORT_MASS = 0.02
_HUE_REVEAL_BINS = 4  # 40 degrees


@dataclass(frozen=True)
class DriftTolerance:
    """Maps a drift ``d`` to a penalty ``clip((d - tolerance) / scale, 0, 1)``.

    Args:
        tolerance: Drift that real videos show and that costs nothing.
        scale: Drift beyond the tolerance at which the penalty reaches 1.

    Raises:
        ValueError: If ``tolerance < 0`` or ``scale <= 0``.
    """

    tolerance: float
    scale: float

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def penalty(self, drift: np.ndarray) -> np.ndarray:
        """Penalty in ``[0, 1]`` of each drift (same shape)."""
        return np.clip((np.asarray(drift, dtype=np.float64) - self.tolerance) / self.scale, 0.0, 1.0)


#: Tolerances and scales of every component, in the units of the module docstring. Each tolerance
#: sits above the largest window drift of 400 real videos of the built-in world (200 frames, 8-frame
#: windows, both background kinds): exposure 0.131 (a slowly changing background), saturation 0,
#: detail 0.154 (occlusions change the edge mix), noise 0, colour 0.214 (changing background,
#: occlusions), hue 0, motion 0.686 (pixel-rounded motion, bounces). The scales put a total failure
#: at: exposure +-0.45 mean luma, saturation -0.43 chroma, edges down 85 %, noise sigma 0.11 (0.22 in
#: ``[-1, 1]`` units), mean colour moved by 0.75, all coloured mass 43 degrees off, motion stopped.
#: The temporal components are absolute; on 100 real videos (200 frames, 8-frame windows, both
#: background kinds; centre frames taken across window borders) the largest window values were
#: flicker 0.045 (an object entering or leaving the frame), pulse 0.043, jitter 0.0153 (a bounce or
#: an occlusion) and shake 0.31 (pixel-rounded motion of several objects); the penalty is total at
#: flicker 0.65 (a whole-frame brightness alternating by +-0.19 in ``[-1, 1]`` units), pulse 0.35
#: (one frame brighter by 0.35 in ``[-1, 1]`` units), jitter 0.068 (frames shaken at random by 1 px
#: measure 0.016-0.028, by 3 px 0.03-0.054) and shake 0.93 (the whole frame moved 3 px back and
#: forth every 2 frames measures about 0.8).
DEFAULT_TOLERANCES: Mapping[str, DriftTolerance] = MappingProxyType(
    {
        "exposure": DriftTolerance(tolerance=0.15, scale=0.3),
        "saturation": DriftTolerance(tolerance=0.03, scale=0.4),
        "detail": DriftTolerance(tolerance=0.18, scale=0.67),
        "noise": DriftTolerance(tolerance=0.01, scale=0.1),
        "colour": DriftTolerance(tolerance=0.25, scale=0.5),
        "hue": DriftTolerance(tolerance=0.02, scale=0.1),
        "motion": DriftTolerance(tolerance=0.7, scale=0.3),
        "flicker": DriftTolerance(tolerance=0.05, scale=0.6),
        "pulse": DriftTolerance(tolerance=0.05, scale=0.3),
        "jitter": DriftTolerance(tolerance=0.018, scale=0.05),
        "shake": DriftTolerance(tolerance=0.33, scale=0.6),
    }
)


# -- per-window statistics and drifts ------------------------------------------------------------


@dataclass(frozen=True)
class WindowStatistics:
    """Statistics of the ``K`` windows of one video (see the module docstring's table).

    Attributes:
        exposure: ``(K,)`` mean luma.
        saturation: ``(K,)`` 97th percentile of chroma.
        detail: ``(K,)`` edge strength.
        noise: ``(K,)`` noise sigma.
        colour: ``(K, 3)`` mean RGB.
        hue: ``(K, 36)`` chroma-weighted hue histograms (each sums to 1, or to 0 without colour).
        motion: ``(K,)`` mean top flow magnitude in pixels per frame.
        flicker: ``(K,)`` mean norm of the second temporal difference of the frames' mean colour.
        pulse: ``(K,)`` largest amount by which a frame (or a two-frame run) stands out from both
            neighbours in mean colour.
        jitter: ``(K,)`` mean frame change that comes back within a frame triple.
        shake: ``(K,)`` mean back-and-forth of the whole frame's translation, px per frame pair.
    """

    exposure: np.ndarray
    saturation: np.ndarray
    detail: np.ndarray
    noise: np.ndarray
    colour: np.ndarray
    hue: np.ndarray
    motion: np.ndarray
    flicker: np.ndarray
    pulse: np.ndarray
    jitter: np.ndarray
    shake: np.ndarray

    @property
    def num_windows(self) -> int:
        """Number of windows ``K``."""
        return int(self.exposure.shape[0])


def _hue_histograms(rgb: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Chroma-weighted hue histograms ``(K, 36)`` of windowed pixels ``rgb`` ``(3, K, P)``, ``chroma`` ``(K, P)``."""
    weights = np.where(chroma > _HUE_MIN_CHROMA, chroma, 0.0)  # (K, P)
    # (K, P) bin indices; bin b is centred on b * 10 degrees
    bins = np.floor(hue_turns(rgb) * _HUE_BINS + 0.5).astype(np.int64) % _HUE_BINS
    histograms = np.zeros((weights.shape[0], _HUE_BINS))
    for window in range(weights.shape[0]):
        histograms[window] = np.bincount(bins[window], weights=weights[window], minlength=_HUE_BINS)
    totals = histograms.sum(axis=1, keepdims=True)  # (K, 1)
    return np.divide(histograms, totals, out=np.zeros_like(histograms), where=totals > 0)


def window_statistics(
    video: np.ndarray,
    window_frames: int = 8,
    flow_method: str = "dis",
    flow_upscale: int = 4,
) -> WindowStatistics:
    """Per-window statistics of one video.

    Args:
        video: One video ``(3, F, H, W)`` in ``[-1, 1]`` with ``F >= window_frames``.
        window_frames: Frames per window (``>= 2``); windows do not overlap.
        flow_method: Optical-flow method (see :func:`dense_flow`).
        flow_upscale: Optical-flow upscaling factor.

    Returns:
        The statistics of the ``F // window_frames`` windows.

    Raises:
        ValueError: For a bad shape or a video shorter than one window.
    """
    _check_window_frames(window_frames)
    video = as_single_video(video, min_frames=window_frames)
    num_windows = video.shape[1] // window_frames
    used = num_windows * window_frames
    rgb = to_unit_rgb(video[:, :used])  # (3, K*W, H, W)
    luma, chroma = luma_chroma(rgb)  # (K*W, H, W) each
    edges = edge_strength(rgb).reshape(num_windows, window_frames)  # (K, W)
    noise = noise_level(rgb).reshape(num_windows, window_frames)  # (K, W)
    pixels = rgb.reshape(3, num_windows, -1)  # (3, K, W*H*W)
    chroma_windows = chroma.reshape(num_windows, -1)  # (K, W*H*W)
    motion = motion_magnitudes(video[:, :used], method=flow_method, upscale=flow_upscale)  # (K*W - 1,)
    motion = np.append(motion, 0.0).reshape(num_windows, window_frames)[:, :-1]  # (K, W-1): pairs inside
    # temporal statistics: per centre frame (or pair), the neighbours taken wherever they are
    colours = frame_colours(rgb)  # (3, K*W)
    shifts = global_shifts(rgb) if min(rgb.shape[2:]) > 6 else np.zeros((used - 1, 2))  # (K*W - 1, 2)
    return WindowStatistics(
        exposure=luma.reshape(num_windows, -1).mean(axis=1),  # (K, W*H*W) -> (K,)
        saturation=np.quantile(chroma_windows, 0.97, axis=1),
        detail=edges.mean(axis=1),
        noise=noise.mean(axis=1),
        colour=pixels.mean(axis=2).T,  # (K, 3)
        hue=_hue_histograms(pixels, chroma_windows),
        motion=motion.mean(axis=1),
        flicker=per_window(colour_flicker(colours), num_windows, window_frames),
        pulse=per_window(colour_pulses(colours), num_windows, window_frames, reduce="max"),
        jitter=per_window(frame_returns(rgb), num_windows, window_frames),
        shake=per_window(back_and_forth(shifts), num_windows, window_frames),
    )


def _circular_bin_distance(support: np.ndarray) -> np.ndarray:
    """Distance in bins from every hue bin to the nearest bin of the boolean ``support`` ``(36,)`` (inf if empty)."""
    bins = np.flatnonzero(support)
    if bins.size == 0:
        return np.full(_HUE_BINS, np.inf)
    offsets = np.abs(np.arange(_HUE_BINS)[:, None] - bins[None, :])  # (36, S)
    return np.minimum(offsets, _HUE_BINS - offsets).min(axis=1).astype(np.float64)  # (36,)


def _hue_drift(histograms: np.ndarray) -> np.ndarray:
    """Mass-weighted circular distance (turns) of each window's hues to the reference hues: ``(K,)``.

    The reference hues are the bins holding at least 2 % of the first window's coloured mass. A hue
    that appears at least 40 degrees away from every hue seen in an earlier window is new content
    (an object coming out from behind another) and joins the reference; mass that creeps away from
    the reference hues bin by bin is drift. A window without coloured pixels has no hue drift (the
    loss of colour is the saturation component's business).
    """
    present = histograms >= _HUE_SUPPORT_MASS  # (K, 36)
    reference = present[0].copy()
    seen = present[0].copy()
    drifts = np.zeros(histograms.shape[0])
    for window in range(1, histograms.shape[0]):
        revealed = present[window] & (_circular_bin_distance(seen) >= _HUE_REVEAL_BINS)
        reference |= revealed
        seen |= present[window]
        distance = np.minimum(_circular_bin_distance(reference), _HUE_BINS / 2.0) / _HUE_BINS  # (36,) turns
        drifts[window] = histograms[window] @ distance
    return drifts


def component_drifts(stats: WindowStatistics, motion_floor: float = 0.05) -> dict[str, np.ndarray]:
    """Drift of every window from the first one, per component (see the module docstring).

    Args:
        stats: Window statistics of one video.
        motion_floor: Smallest reference motion (px/frame), so that a video frozen from its first
            window is recognised as frozen.

    Returns:
        ``{component: (K,) drift}``; window 0 has zero drift, except for motion when the first
        window moves less than ``motion_floor``.

    The hue reference starts as the hue bins holding at least 2 % of the first window's coloured
    mass; a hue appearing at least 40 degrees away from every hue seen in earlier windows is new
    content (an object coming out from behind another) and joins the reference, whereas mass that
    creeps away from the reference bin by bin is drift.
    """
    reference_motion = max(float(stats.motion[0]), motion_floor)
    reference_edges = max(float(stats.detail[0]), 1e-6)
    return {
        "exposure": np.abs(stats.exposure - stats.exposure[0]),
        "saturation": np.abs(stats.saturation - stats.saturation[0]),
        "detail": np.maximum(0.0, 1.0 - stats.detail / reference_edges),
        "noise": np.maximum(0.0, stats.noise - stats.noise[0]),
        "colour": np.linalg.norm(stats.colour - stats.colour[0], axis=1),
        "hue": _hue_drift(stats.hue),
        "motion": np.maximum(0.0, 1.0 - stats.motion / reference_motion),
        "flicker": stats.flicker,
        "pulse": stats.pulse,
        "jitter": stats.jitter,
        "shake": stats.shake,
    }


def component_penalties(
    stats: WindowStatistics,
    tolerances: Mapping[str, DriftTolerance] = DEFAULT_TOLERANCES,
    motion_floor: float = 0.05,
) -> dict[str, np.ndarray]:
    """Penalty in ``[0, 1]`` of every window and component: ``{component: (K,)}``."""
    drifts = component_drifts(stats, motion_floor)
    return {name: tolerances[name].penalty(drifts[name]) for name in COMPONENTS}


def _check_tolerances(tolerances: Mapping[str, DriftTolerance]) -> None:
    missing = [name for name in COMPONENTS if name not in tolerances]
    unknown = [name for name in tolerances if name not in COMPONENTS]
    if missing or unknown:
        raise ValueError(
            f"tolerances must give exactly the components {COMPONENTS}; missing {missing}, unknown {unknown}"
        )


# -- scores --------------------------------------------------------------------------------------


def _window_scores(penalties: Mapping[str, np.ndarray]) -> np.ndarray:
    """``100 * prod_c (1 - p_c,k)``: ``(K,)``."""
    return 100.0 * np.prod(np.stack([1.0 - penalties[name] for name in COMPONENTS]), axis=0)


def stability_scores(
    video: np.ndarray | torch.Tensor,
    window_frames: int = 8,
    tolerances: Mapping[str, DriftTolerance] = DEFAULT_TOLERANCES,
    motion_floor: float = 0.05,
) -> dict[str, float]:
    """Visual stability of one video and its per-component breakdown.

    Args:
        video: One video ``(3, F, H, W)`` in ``[-1, 1]`` with ``F >= 2 * window_frames``.
        window_frames: Frames per window.
        tolerances: Tolerance and scale per component (:data:`DEFAULT_TOLERANCES`).
        motion_floor: Smallest reference motion in px/frame.

    Returns:
        ``{"score": S, component: 100 * mean_{k >= 1} (1 - p_c,k), ...}``, all in ``[0, 100]``.

    Raises:
        ValueError: For a bad shape, a video shorter than two windows or incomplete tolerances.
    """
    _check_window_frames(window_frames)
    _check_tolerances(tolerances)
    array = as_single_video(video, min_frames=2 * window_frames)
    penalties = component_penalties(window_statistics(array, window_frames), tolerances, motion_floor)
    scores = {"score": float(_window_scores(penalties)[1:].mean())}
    scores.update({name: float(100.0 * (1.0 - penalties[name][1:]).mean()) for name in COMPONENTS})
    return scores


def stability_breakdown(
    video: np.ndarray | torch.Tensor,
    window_frames: int = 8,
    tolerances: Mapping[str, DriftTolerance] = DEFAULT_TOLERANCES,
    motion_floor: float = 0.05,
) -> dict[str, torch.Tensor]:
    """Score ``s_k`` of every window along a video and every component's part of it.

    Args:
        video: One video ``(3, F, H, W)`` or a batch ``(B, 3, F, H, W)`` in ``[-1, 1]``, with
            ``F >= window_frames`` (a video of one window is its own reference: only the temporal
            components and a frozen first window can lower its score).
        window_frames: Frames per window.
        tolerances: Tolerance and scale per component.
        motion_floor: Smallest reference motion in px/frame.

    Returns:
        ``{"score": s_k, component: 100 (1 - p_c,k), ...}``, each float32 ``(K,)`` for one video or
        ``(B, K)`` for a batch, ``K = F // window_frames``.

    Raises:
        ValueError: For a bad shape or a video shorter than one window.
    """
    _check_window_frames(window_frames)
    _check_tolerances(tolerances)
    single = video.ndim == 4
    batch = as_video_batch(video[None] if single else video, min_frames=window_frames)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ("score", *COMPONENTS)}
    for one in batch:
        penalties = component_penalties(window_statistics(one, window_frames), tolerances, motion_floor)
        rows["score"].append(_window_scores(penalties))
        for name in COMPONENTS:
            rows[name].append(100.0 * (1.0 - penalties[name]))
    result = {name: torch.from_numpy(np.stack(values)).float() for name, values in rows.items()}  # (B, K)
    return {name: values[0] for name, values in result.items()} if single else result


def stability_curve(
    video: np.ndarray | torch.Tensor,
    window_frames: int = 8,
    tolerances: Mapping[str, DriftTolerance] = DEFAULT_TOLERANCES,
    motion_floor: float = 0.05,
) -> torch.Tensor:
    """Stability score ``s_k`` of every window along a video, for plots (window 0 is its own reference).

    Args:
        video: One video ``(3, F, H, W)`` or a batch ``(B, 3, F, H, W)`` in ``[-1, 1]``, with
            ``F >= window_frames``.
        window_frames: Frames per window.
        tolerances: Tolerance and scale per component.
        motion_floor: Smallest reference motion in px/frame.

    Returns:
        Float32 ``(K,)`` for one video or ``(B, K)`` for a batch, ``K = F // window_frames``.

    Raises:
        ValueError: For a bad shape or a video shorter than one window.
    """
    return stability_breakdown(video, window_frames, tolerances, motion_floor)["score"]


class VisualStability(Metric):
    """Visual stability (0-100) of long videos; see the module docstring for the formula.

    ``update(videos)`` takes ``(B, 3, F, H, W)`` in ``[-1, 1]`` (``F >= 2 * window_frames``; videos of
    different updates may differ in length), ``compute()`` returns the mean score over all videos and
    :meth:`compute_per_video` the per-video scores with their breakdown.

    Args:
        window_frames: Frames per window; each window is compared with the first.
        tolerances: Tolerance and scale per component (:data:`DEFAULT_TOLERANCES`).
        motion_floor: Smallest reference motion in px/frame.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: For ``window_frames < 2``, incomplete tolerances or ``motion_floor <= 0``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        window_frames: int = 8,
        tolerances: Mapping[str, DriftTolerance] = DEFAULT_TOLERANCES,
        motion_floor: float = 0.05,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        _check_window_frames(window_frames)
        _check_tolerances(tolerances)
        if motion_floor <= 0:
            raise ValueError(f"motion_floor must be > 0 px/frame, got {motion_floor}")
        self.window_frames = window_frames
        self.tolerances = dict(tolerances)
        self.motion_floor = motion_floor
        # one row per video: the score followed by the component scores
        self.add_state("video_scores", default=[], dist_reduce_fx="cat")

    def update(self, videos: torch.Tensor) -> None:
        """Score a batch of videos ``(B, 3, F, H, W)`` in ``[-1, 1]``."""
        batch = as_video_batch(videos, min_frames=2 * self.window_frames)
        rows = []
        for video in batch:
            scores = stability_scores(video, self.window_frames, self.tolerances, self.motion_floor)
            rows.append([scores["score"]] + [scores[name] for name in COMPONENTS])
        self.video_scores.append(torch.tensor(rows, dtype=torch.float64, device=self.device))  # (B, 1+C)

    def _all_rows(self) -> torch.Tensor:
        if not self.video_scores:
            raise ValueError("VisualStability has no videos yet; call update(videos) first")
        return dim_zero_cat(self.video_scores)  # (N, 1+C)

    def compute(self) -> torch.Tensor:
        """Mean visual stability over all videos seen (float32 scalar in ``[0, 100]``)."""
        return self._all_rows()[:, 0].mean().float()

    def compute_per_video(self) -> dict[str, torch.Tensor]:
        """Per-video scores and breakdown: ``{"score": (N,), component: (N,), ...}`` in ``[0, 100]``."""
        rows = self._all_rows().float()
        return {name: rows[:, index] for index, name in enumerate(("score", *COMPONENTS))}
