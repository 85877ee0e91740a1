"""Long-video evaluation of the built-in world: numbers and curves along a video.

One call scores a batch of generated videos with every metric of the library and returns both the
summary numbers and the per-window curves, measured in units of the teacher's horizon:

* visual stability (0-100, :class:`~sfpp.metrics.stability.VisualStability`) and its curve;
* quality: the per-window Frechet distance of frame features to real clips
  (:class:`~sfpp.metrics.quality_curve.WindowQuality`, lower is better);
* dynamic degree (:class:`~sfpp.metrics.quality_curve.DynamicDegree`);
* the world's object scores (:class:`~sfpp.world.objects.WorldObjectScore`), when prompts
  are given.

:func:`plot_curves` draws the curves of one or several models against time, with the teacher's
horizon marked, into a PNG a reader can take in at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sfpp.metrics.quality_curve import DynamicDegree, WindowQuality
from sfpp.metrics.stability import VisualStability, stability_curve
from sfpp.world import WorldObjectScore, world_feature_statistics

__all__ = ["LongVideoReport", "evaluate_long_videos", "plot_curves"]


@dataclass
class LongVideoReport:
    """Scores of a batch of long videos.

    Attributes:
        summary: Scalar scores: ``visual_stability``, ``quality_fd`` (mean over windows),
            ``dynamic_degree``, ``moving_fraction`` and, with prompts, the world's object scores.
        stability_curve: ``(K,)`` mean stability of each window (window 0 is the reference).
        quality_curve: ``(K,)`` Frechet distance of each window to real clips.
        window_frames: Frames per window of the curves.
    """

    summary: dict[str, float]
    stability_curve: np.ndarray
    quality_curve: np.ndarray
    window_frames: int
    per_video_stability: list[float] = field(default_factory=list)


def evaluate_long_videos(
    videos: torch.Tensor, prompts: Sequence[str] | None = None, window_frames: int = 8
) -> LongVideoReport:
    """Score videos ``(B, 3, F, H, W)`` in ``[-1, 1]`` with every long-video metric.

    Args:
        videos: Decoded videos, at least two windows long.
        prompts: One prompt per video (adds the world's object scores), or ``None``.
        window_frames: Window of the stability and quality curves (the teacher's horizon in frames
            is a natural choice).

    Raises:
        ValueError: For a malformed batch, a video shorter than two windows, or a prompt count
            that does not match.
    """
    videos = videos.detach().float().cpu()
    stability = VisualStability(window_frames=window_frames)
    stability.update(videos)
    per_video = stability.compute_per_video()
    quality = WindowQuality(world_feature_statistics, window_frames=window_frames)
    quality.update(videos)
    quality_curve = quality.compute().numpy()
    dynamic = DynamicDegree()
    dynamic.update(videos)
    summary = {"visual_stability": float(stability.compute()), "quality_fd": float(quality_curve.mean())}
    summary |= {name: float(value) for name, value in dynamic.compute().items()}
    if prompts is not None:
        summary |= {f"world_{k}": float(v) for k, v in WorldObjectScore()(videos, list(prompts)).items()}
    curve = stability_curve(videos, window_frames=window_frames)  # (B, K)
    return LongVideoReport(
        summary=summary,
        stability_curve=curve.mean(dim=0).numpy(),
        quality_curve=quality_curve,
        window_frames=window_frames,
        per_video_stability=[float(v) for v in per_video["score"]],
    )


def plot_curves(
    reports: Mapping[str, LongVideoReport], path: str | Path, horizon_frames: int, fps: float | None = None
) -> Path:
    """Plot stability and quality along the video for one or more models into a PNG.

    Args:
        reports: ``{label: report}``; every report must use the same window.
        path: Output PNG.
        horizon_frames: The teacher's horizon in frames; the x axis counts horizons and a dashed
            line marks the end of the first one (what the teacher was trained on).
        fps: When given, the top axis also shows seconds.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
    for label, report in reports.items():
        centres = (np.arange(len(report.stability_curve)) + 0.5) * report.window_frames / horizon_frames
        top.plot(centres, report.stability_curve, marker="o", markersize=3, label=label)
        bottom.plot(centres, report.quality_curve, marker="o", markersize=3, label=label)
    for axis in (top, bottom):
        axis.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    top.set_ylabel("visual stability (0-100)")
    top.set_ylim(-2, 102)
    top.legend(loc="lower left")
    top.set_title("quality along the video (dashed: end of the teacher's horizon)")
    bottom.set_ylabel("Frechet distance to real clips\n(lower is better)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(f"time in teacher horizons ({horizon_frames} frames each)")
    if fps is not None:
        seconds = bottom.secondary_xaxis(
            "top", functions=(lambda h: h * horizon_frames / fps, lambda s: s * fps / horizon_frames)
        )
        seconds.set_xlabel("seconds")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
