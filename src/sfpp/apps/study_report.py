"""The study's report: methods aggregated over training seeds, the target checks, plot, frames.

The table is the study's results page (:func:`sfpp.apps.results_pages.study_page`).

The scores of :mod:`sfpp.apps.study_metrics` are one value per evaluation seed for every model. A
method's number at a horizon is the mean over its training seeds of each student's mean over the
evaluation seeds; ``train_spread`` is the standard deviation of those student means (the spread over
training seeds, 0 with one student) and ``eval_spread`` the mean over students of the standard
deviation over evaluation seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfpp.apps.study_metrics import METRICS, better
from sfpp.world import HORIZON

__all__ = [
    "REAL_LABEL",
    "SFPP_CONTINUED",
    "SF_CONTINUED",
    "TEACHER_LABEL",
    "check_target",
    "group_results",
    "plot_results",
    "write_frames",
]

REAL_LABEL = "Real videos (reference)"
TEACHER_LABEL = "Teacher at its horizon (reference)"
SF_CONTINUED = "Self-Forcing (continued)"
SFPP_CONTINUED = "Self-Forcing++ (continued)"
_REFERENCES = (REAL_LABEL, TEACHER_LABEL)


def group_results(
    scores: Mapping[str, Mapping[str, Mapping[str, list[float]]]], methods: Mapping[str, str]
) -> dict:
    """``{method: {"members": [labels], "horizons": {h: {metric: {"mean", "train_spread", "eval_spread"}}}}}``.

    Args:
        scores: ``{label: {horizon: {metric: [per evaluation seed]}}}`` (horizons as strings, as in
            the JSON); the reference rows are methods of their own.
        methods: ``{student label: method}``.
    """
    members: dict[str, list[str]] = {}
    for label in scores:
        members.setdefault(methods.get(label, label), []).append(label)
    grouped: dict[str, Any] = {}
    for method, labels in members.items():
        horizons: dict[str, dict[str, dict[str, float]]] = {}
        for horizon in scores[labels[0]]:
            per_metric = {}
            for metric in scores[labels[0]][horizon]:
                student_means = [float(np.mean(scores[label][horizon][metric])) for label in labels]
                eval_spreads = [float(np.std(scores[label][horizon][metric])) for label in labels]
                per_metric[metric] = {
                    "mean": float(np.mean(student_means)),
                    "train_spread": float(np.std(student_means)),
                    "eval_spread": float(np.mean(eval_spreads)),
                }
            horizons[horizon] = per_metric
        grouped[method] = {"members": labels, "horizons": horizons}
    return grouped


def _value(results: Mapping, method: str, horizon: int, metric: str, key: str = "mean") -> float:
    return float(results["methods"][method]["horizons"][str(horizon)][metric][key])


def check_target(results: Mapping) -> dict[str, dict[str, Any]]:
    """The study's target, checked on its numbers: ``{check: {"passed": bool, "detail": str}}``.

    * Self-Forcing++ keeps its 20x Frechet distance within 10 % of its 1x value;
    * it beats the Self-Forcing continuation at 20x and 50x by more than twice the spread over
      training seeds (the larger of the two methods'), and is no worse at 1x than that spread;
    * every student method's 1x Frechet distance is within 1.5x of the teacher's clips, and its 1x
      clean-frame fraction and shape accuracy at least 80 % of the teacher's.

    The checks against the training-seed spread fail, saying why, when a method has one training seed.
    """
    methods = results["methods"]
    checks: dict[str, dict[str, Any]] = {}
    pair = (SF_CONTINUED, SFPP_CONTINUED)
    if all(m in methods for m in pair):
        measured = set.intersection(*(set(methods[m]["horizons"]) for m in pair))
        shown = [h for h in (1, 20, 50) if str(h) in measured]
        fd = {(m, h): _value(results, m, h, "quality_fd") for m in pair for h in shown}
        spread = {h: max(_value(results, m, h, "quality_fd", "train_spread") for m in pair) for h in shown}
        # with one training seed per method there is no training-seed spread to beat
        seeded = min(len(methods[m]["members"]) for m in pair) >= 2
        unseeded = "" if seeded else " (one training seed: no spread to compare with, not checked)"
        if {1, 20} <= set(shown):
            ratio = fd[SFPP_CONTINUED, 20] / fd[SFPP_CONTINUED, 1]
            checks["sfpp_fd_20x_within_10pct_of_1x"] = {
                "passed": ratio <= 1.1,
                "detail": f"FD {fd[SFPP_CONTINUED, 20]:.2f} at 20x vs {fd[SFPP_CONTINUED, 1]:.2f} at 1x "
                f"(x{ratio:.2f})",
            }
        for horizon in (h for h in (20, 50) if h in shown):
            margin = fd[SF_CONTINUED, horizon] - fd[SFPP_CONTINUED, horizon]
            checks[f"sfpp_beats_sf_at_{horizon}x"] = {
                "passed": seeded and margin > 2 * spread[horizon],
                "detail": f"FD {fd[SFPP_CONTINUED, horizon]:.2f} vs {fd[SF_CONTINUED, horizon]:.2f}: "
                f"margin {margin:.2f}, twice the training-seed spread {2 * spread[horizon]:.2f}{unseeded}",
            }
        if 1 in shown:
            worse = fd[SFPP_CONTINUED, 1] - fd[SF_CONTINUED, 1]
            checks["sfpp_no_worse_at_1x"] = {
                "passed": seeded and worse <= spread[1],
                "detail": f"FD {fd[SFPP_CONTINUED, 1]:.2f} vs {fd[SF_CONTINUED, 1]:.2f} (spread {spread[1]:.2f})"
                + unseeded,
            }
    if TEACHER_LABEL in methods:
        teacher = {
            m: _value(results, TEACHER_LABEL, 1, m) for m in ("quality_fd", "clean_frames", "shape_accuracy")
        }
        for method in methods:
            if method in _REFERENCES:
                continue
            student = {m: _value(results, method, 1, m) for m in teacher}
            checks[f"{method}: distils the teacher at 1x"] = {
                "passed": student["quality_fd"] <= 1.5 * teacher["quality_fd"]
                and student["clean_frames"] >= 0.8 * teacher["clean_frames"]
                and student["shape_accuracy"] >= 0.8 * teacher["shape_accuracy"],
                "detail": ", ".join(f"{m} {student[m]:.3f} (teacher {teacher[m]:.3f})" for m in teacher),
            }
    return checks


def plot_results(results: Mapping, path: Path) -> Path:
    """Every metric against the horizon (log axis), one line per method, spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("quality_fd", "stability", "clean_frames", "shape_accuracy", "motion_gap", "detected")
    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True)
    for axis, metric in zip(axes.flat, shown, strict=True):
        title = METRICS[metric][0]
        for method, entry in results["methods"].items():
            horizons = [int(h) for h in entry["horizons"] if metric in entry["horizons"][h]]
            cells = [entry["horizons"][str(h)][metric] for h in horizons]
            means = [c["mean"] for c in cells]
            spreads = [c["train_spread"] if c["train_spread"] > 0 else c["eval_spread"] for c in cells]
            style = {"color": "0.4", "linestyle": "--"} if method in _REFERENCES else {}
            marker = "*" if method == TEACHER_LABEL else "o"
            axis.errorbar(horizons, means, yerr=spreads, marker=marker, capsize=3, label=method, **style)
        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xticks(results["protocol"]["horizons"], [f"{h}x" for h in results["protocol"]["horizons"]])
        axis.set_title(f"{title} ({better(metric)})")
        axis.set_xlabel("window ending at (teacher horizons)")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_frames(
    videos: Mapping[str, torch.Tensor], horizons: tuple[int, ...], path: Path, per_window: int = 4
) -> Path:
    """A frame strip: one row per model, ``per_window`` frames of the window ending at each horizon.

    Args:
        videos: ``{label: (3, F, H, W)}`` in ``[-1, 1]`` (one prompt, one seed).
        horizons: Horizons to show (windows longer than a video are left out).
        path: Output PNG.
        per_window: Evenly spaced frames shown per window.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(videos), 1, figsize=(2.2 * len(horizons) * per_window / 2, 1.3 * len(videos))
    )
    axes = np.atleast_1d(axes)
    for axis, (label, video) in zip(axes, videos.items(), strict=True):
        tiles = []
        for horizon in horizons:
            if horizon * HORIZON > video.shape[1]:
                continue
            frames = torch.linspace((horizon - 1) * HORIZON, horizon * HORIZON - 1, per_window).round().long()
            strip = video[:, frames]  # (3, per_window, H, W)
            tiles.append(torch.cat(list(strip.unbind(dim=1)), dim=-1))  # (3, H, per_window * W)
            tiles.append(torch.ones(3, video.shape[2], 2))  # a white gap between horizons
        image = torch.cat(tiles[:-1], dim=-1)  # (3, H, total W)
        axis.imshow(((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="nearest")
        axis.set_yticks([])
        axis.set_xticks([])
        axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0].set_title("   |   ".join(f"window ending at {h}x" for h in horizons), fontsize=9)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
