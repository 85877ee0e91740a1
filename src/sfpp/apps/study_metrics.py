"""The study's numbers: every metric on the teacher-horizon window that ends at each evaluation horizon.

A video of ``max(horizons)`` teacher horizons is scored at horizon ``h`` on its frames
``[(h - 1) K, h K)`` (``K`` = :data:`~sfpp.world.HORIZON` frames), the last window of a video ``h``
horizons long, so that a late failure is not averaged away by a good start. At every horizon:

* ``quality_fd``: the Frechet distance of the window's frame features to real clips
  (:class:`~sfpp.metrics.quality_curve.WindowQuality`, fitted on all prompts' frames of the window);
* ``stability``: the visual stability ``s_k`` of the window against the video's own first window,
  temporal components included (:func:`~sfpp.metrics.stability.stability_breakdown`; at 1x the
  first window is scored alone, as the teacher's one-horizon clips are, so only the frozen-motion
  and temporal components can lower it), its parts ``stability:<component>`` (:data:`STABILITY_PARTS`,
  not rows of the table: each component's ``100 (1 - penalty)``, whose product is the score), and
  ``stability_prefix``: the mean of ``s_k`` over the windows after the first up to ``h`` (the
  whole-video score of the first ``h`` horizons; from 2x on);
* the world's object score on the window: ``clean_frames``, ``detected``, ``shape_accuracy``
  (:class:`~sfpp.world.objects.WorldObjectScore`);
* ``motion``: the dynamic degree of the window in px/frame, and ``motion_gap``: its distance to the
  real videos' motion on the same window (same prompts, same evaluation seed); lower is better, so
  neither a frozen nor a racing video wins;
* the parts of ``quality_fd`` (:data:`FD_PARTS`, not rows of the table;
  :meth:`~sfpp.metrics.quality_curve.WindowQuality.parts`): ``fd_mean_term`` and ``fd_cov_term``,
  which sum to it, and for every frame feature ``fd_shift:<feature>``, its standardised window mean
  minus the real clips' (signed; the squares sum to ``fd_mean_term``).

Every value is one number per evaluation seed (a batch of all prompts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sfpp.metrics.quality_curve import FEATURE_NAMES, DynamicDegree, WindowQuality
from sfpp.metrics.stability import COMPONENTS, stability_breakdown
from sfpp.world import HORIZON, WorldObjectScore, world_feature_statistics

__all__ = [
    "FD_PARTS",
    "METRICS",
    "STABILITY_PARTS",
    "Scores",
    "better",
    "mean_and_spread",
    "score_horizons",
    "shift_metric",
    "stability_part",
    "window_motion",
]

#: ``{metric: (title, higher is better)}`` in the order of the table; ``None`` for a measurement
#: that is neither (motion: real videos' value is the reference, ``motion_gap`` the distance to it).
METRICS: dict[str, tuple[str, bool | None]] = {
    "quality_fd": ("FD to real", False),
    "stability": ("stability", True),
    "stability_prefix": ("stability (prefix)", True),
    "clean_frames": ("clean frames", True),
    "detected": ("objects detected", True),
    "shape_accuracy": ("shape accuracy", True),
    "motion": ("motion px/frame", None),
    "motion_gap": ("motion gap to real", False),
}


def shift_metric(feature: str) -> str:
    """The name of a frame feature's shift in the scores (``fd_shift:<feature>``)."""
    return f"fd_shift:{feature}"


#: The parts of ``quality_fd`` recorded beside the metrics: its two terms, then every feature's shift.
FD_PARTS: tuple[str, ...] = ("fd_mean_term", "fd_cov_term", *(shift_metric(f) for f in FEATURE_NAMES))


def stability_part(component: str) -> str:
    """The name of a stability component's score in the scores (``stability:<component>``)."""
    return f"stability:{component}"


#: The parts of ``stability`` recorded beside the metrics, one per component.
STABILITY_PARTS: tuple[str, ...] = tuple(stability_part(c) for c in COMPONENTS)


def better(metric: str) -> str:
    """Which way a metric of :data:`METRICS` is better, for a table's or a plot's title."""
    up = METRICS[metric][1]
    if up is None:
        return "real videos are the reference"
    return "higher is better" if up else "lower is better"


#: ``{horizon: {metric: [value per evaluation seed]}}``.
Scores = dict[int, dict[str, list[float]]]


def _window(videos: torch.Tensor, horizon: int) -> torch.Tensor:
    """The frames ``[(h - 1) K, h K)`` of videos ``(B, 3, F, H, W)``: ``(B, 3, K, H, W)``."""
    return videos[:, :, (horizon - 1) * HORIZON : horizon * HORIZON]


def window_motion(window: torch.Tensor) -> float:
    """Dynamic degree (px/frame) of videos ``(B, 3, F, H, W)``."""
    metric = DynamicDegree()
    metric.update(window)
    return float(metric.compute()["dynamic_degree"])


def score_horizons(
    videos_by_seed: Mapping[int, torch.Tensor],
    prompts: Sequence[str],
    horizons: Sequence[int],
    real_by_seed: Mapping[int, torch.Tensor],
) -> Scores:
    """Score the windows that end at each horizon, for every evaluation seed.

    Args:
        videos_by_seed: ``{seed: (B, 3, F, H, W)}`` in ``[-1, 1]``, ``F >= max(horizons) * K``
            (the teacher's clips, one horizon long, are scored at ``horizons=(1,)``).
        prompts: The ``B`` prompts.
        horizons: Evaluation horizons (1-based, in teacher horizons).
        real_by_seed: Real videos of the same prompts and seeds, at least as long: the motion
            reference.

    Returns:
        ``{horizon: {metric: [value per seed]}}`` with the metrics of :data:`METRICS`
        (``stability_prefix`` from 2x on) and the parts of :data:`FD_PARTS` and
        :data:`STABILITY_PARTS`.

    Raises:
        ValueError: If a video is shorter than the longest horizon or a seed has no real videos.
    """
    objects = WorldObjectScore()
    scores: Scores = {h: {} for h in horizons}
    for seed, videos in videos_by_seed.items():
        videos = videos.detach().float().cpu()
        if videos.shape[2] < max(horizons) * HORIZON:
            raise ValueError(f"videos of {videos.shape[2]} frames are shorter than {max(horizons)} horizons")
        if seed not in real_by_seed:
            raise ValueError(f"no real videos for evaluation seed {seed}")
        length = max(horizons) * HORIZON
        # (B, K) per part; 1x is the first window scored alone, like a one-horizon clip
        along = stability_breakdown(videos[:, :, :length], window_frames=HORIZON)
        alone = stability_breakdown(videos[:, :, :HORIZON], window_frames=HORIZON)
        for horizon in horizons:
            window = _window(videos, horizon)
            quality = WindowQuality(world_feature_statistics, window_frames=HORIZON)
            quality.update(window)
            breakdown = (
                {name: part[:, 0] for name, part in alone.items()}
                if horizon == 1
                else {name: part[:, horizon - 1] for name, part in along.items()}
            )
            world = objects(window, list(prompts))
            motion = window_motion(window)
            real_motion = window_motion(_window(real_by_seed[seed].float(), horizon))
            parts = quality.parts()
            values = {
                "quality_fd": float(parts.distance[0]),
                "stability": float(breakdown["score"].mean()),
                "clean_frames": world["clean_frame_fraction"],
                "detected": world["detected_fraction"],
                "shape_accuracy": world["shape_accuracy"],
                "motion": motion,
                "motion_gap": abs(motion - real_motion),
                "fd_mean_term": float(parts.mean_term[0]),
                "fd_cov_term": float(parts.cov_term[0]),
            }
            values |= {
                shift_metric(f): float(v) for f, v in zip(FEATURE_NAMES, parts.mean_shift[0], strict=True)
            }
            values |= {stability_part(c): float(breakdown[c].mean()) for c in COMPONENTS}
            if horizon > 1:
                values["stability_prefix"] = float(along["score"][:, 1:horizon].mean())
            for name, value in values.items():
                scores[horizon].setdefault(name, []).append(float(value))
    return scores


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation of ``values`` (``nan`` for none)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())
