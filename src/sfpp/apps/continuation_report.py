"""The page, plot and frame strips of ``make continuation`` (:mod:`sfpp.apps.continuation`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfpp.world import HORIZON

__all__ = ["METRICS", "continuation_findings", "continuation_page", "plot_continuation", "write_strips"]

#: ``{metric: (title, higher is better)}`` shown per horizon (``None``: real videos are the reference).
METRICS: dict[str, tuple[str, bool | None]] = {
    "fd_to_continuation": ("FD to the real continuation", False),
    "quality_fd": ("FD to real clips", False),
    "clean_frames": ("clean frames", True),
    "shape_accuracy": ("shape accuracy", True),
    "motion_gap": ("motion gap to the real continuation", False),
}
#: Seam measures: ``{measure: title}``; 1 is the real clips' value.
SEAM: dict[str, str] = {
    "seam_jump": "change at the seam / real",
    "seam_motion": "motion after the seam / real",
}


def _label(given: str) -> str:
    return "an image (1 frame)" if given == "1" else f"a clip of {given} frames"


def write_strips(
    strips: Mapping[str, Mapping[str, torch.Tensor]], out: Path, horizons: int
) -> dict[str, Path]:
    """One frame strip per number of given frames: rows real, then each student.

    Columns: the written prefix's frames (at most 4, the last ones), a gap, the first 4 generated
    frames, then the last frame of the windows ending 5x, 10x and ``horizons``x after the prefix.

    Args:
        strips: ``{given: {row: (3, F, H, W)}}`` (``"real"`` included).
        out: Output directory.
        horizons: Horizons generated after the prefix.

    Returns:
        ``{given: path}`` of ``continuation_given<given>.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for given, videos in strips.items():
        rows = ["real", *[name for name in videos if name != "real"]]
        start = _prefix_length(videos, horizons)
        later = [h for h in (5, 10, horizons) if h <= horizons]
        columns = [*range(max(0, start - 4), start), -1, *range(start, start + 4), -1]
        columns += [start + h * HORIZON - 1 for h in later]
        figure, axes = plt.subplots(len(rows), 1, figsize=(1.0 * len(columns), 1.1 * len(rows)))
        axes = np.atleast_1d(axes)
        for axis, row in zip(axes, rows, strict=True):
            video = videos[row]
            tiles = [
                torch.ones(3, video.shape[2], 3) if c < 0 else video[:, c] for c in columns
            ]  # frames (3, H, W) and white gaps (3, H, 3)
            image = torch.cat(tiles, dim=-1)  # (3, H, total W)
            axis.imshow(((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_ylabel(row, rotation=0, ha="right", va="center", fontsize=8)
        axes[0].set_title(
            f"given {_label(given)}: written prefix | first generated frames | last frame at "
            + ", ".join(f"{h}x" for h in later),
            fontsize=8,
        )
        path = out / f"continuation_given{given}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        paths[given] = path
    return paths


def _prefix_length(videos: Mapping[str, torch.Tensor], horizons: int) -> int:
    """Frames of the written prefix: a generated video holds them, then ``horizons * K`` frames."""
    generated = next(v for name, v in videos.items() if name != "real")
    return int(generated.shape[1]) - horizons * HORIZON


def plot_continuation(data: Mapping[str, Any], path: Path) -> Path:
    """FD to the real continuation and clean frames against the horizon, one column per number of given frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    metrics = ("fd_to_continuation", "clean_frames")
    figure, axes = plt.subplots(
        len(metrics), len(results), figsize=(5 * len(results), 3.2 * len(metrics)), squeeze=False
    )
    for column, (given, rows) in enumerate(results.items()):
        for line, metric in enumerate(metrics):
            axis = axes[line, column]
            for row, entry in rows.items():
                horizons = sorted(int(h) for h in entry["horizons"])
                means = np.array([entry["horizons"][str(h)][metric]["mean"] for h in horizons])
                spreads = np.array([entry["horizons"][str(h)][metric]["spread"] for h in horizons])
                axis.plot(horizons, means, marker="o", markersize=3, label=data["rows"][row])
                axis.fill_between(horizons, means - spreads, means + spreads, alpha=0.2)
            title, up = METRICS[metric]
            axis.set_title(
                f"given {_label(given)}: {title} ({'higher' if up else 'lower'} is better)", fontsize=9
            )
            axis.set_xlabel("teacher horizons after the prefix")
            axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _entry(rows: Mapping[str, Any], row: str, horizon: int, metric: str) -> Mapping[str, float]:
    return rows[row]["horizons"][str(horizon)][metric]


def continuation_findings(data: Mapping[str, Any]) -> list[str]:
    """Sentences by rule: where the prefix-trained student is ahead, behind or level with the plain one.

    A difference counts when the means differ by more than the sum of the two spreads (the
    evaluation seeds' half-range); otherwise the two are level at that horizon.
    """
    findings = []
    last = data["protocol"]["horizons"]
    for given, rows in data["results"].items():
        if "prefix" not in rows or "plain" not in rows:
            continue
        for metric in ("fd_to_continuation", "clean_frames"):
            title, up = METRICS[metric]
            verdicts = {"ahead": [], "behind": [], "level": []}
            for h in range(1, last + 1):
                a, b = _entry(rows, "prefix", h, metric), _entry(rows, "plain", h, metric)
                gap = a["mean"] - b["mean"]
                if abs(gap) <= a["spread"] + b["spread"]:
                    verdicts["level"].append(h)
                else:
                    verdicts["ahead" if (gap > 0) == up else "behind"].append(h)
            parts = [f"{k} at {_horizons(v)}" for k, v in verdicts.items() if v]
            findings.append(
                f"Given {_label(given)}, {title}: the prefix-trained student is " + "; ".join(parts) + "."
            )
        seam = {row: rows[row]["seam"]["seam_jump"] for row in ("prefix", "plain")}
        findings.append(
            f"Given {_label(given)}, change at the seam over the real clips': prefix-trained "
            f"x{seam['prefix']['mean']:.2f} +- {seam['prefix']['spread']:.2f}, without prefixes "
            f"x{seam['plain']['mean']:.2f} +- {seam['plain']['spread']:.2f} (1 = as real)."
        )
    return findings


def _horizons(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1x-3x, 7x``."""
    runs, start = [], values[0]
    for previous, current in zip(values, [*values[1:], None], strict=True):
        if current != previous + 1:
            runs.append(f"{start}x" if start == previous else f"{start}x-{previous}x")
            start = current
    return ", ".join(runs)


def _cell(entry: Mapping[str, float], digits: int = 2) -> str:
    return f"{entry['mean']:.{digits}f} +- {entry['spread']:.{digits}f}"


def continuation_page(data: Mapping[str, Any]) -> str:
    """``docs/results/continuation.md`` from ``continuation.json``."""
    protocol, minutes = data["protocol"], data["minutes"]
    last = protocol["horizons"]
    shown = sorted({1, 2, 5, 10, last} & set(range(1, last + 1)))
    lines = [
        "<!-- generated by python -m sfpp.apps.results_pages from docs/results/continuation.json; do not edit -->",  # noqa: E501
        "# Continuing a clip, animating an image",
        "",
        f"Measured {data['date']} at commit {data['commit'][:12]} on {data['machine']} "
        f"(`{data['command']}`; {minutes['total']:.0f} min, of which evaluation {minutes['evaluation']:.0f} min; "
        "trained stages: "
        + (", ".join(f"{k} {v:.0f} min" for k, v in minutes["trained"].items()) or "none, all reused")
        + ").",
        *([""] + [" ".join(data["notes"])] if data.get("notes") else []),
        "",
        f"Protocol: {protocol['prompts']} held-out prompts x evaluation seeds {protocol['eval_seeds']} (the "
        "study's real clips); each student is given the first frames of the real clip "
        f"({', '.join(_label(str(g)) for g in protocol['given_frames'])}), writes them into its rolling cache "
        f"as finished chunks and streams {last} teacher horizons ({last * protocol['horizon_frames']} frames) "
        "after them. Both students start from the Self-Forcing baseline's EMA weights and critic and train "
        f"{protocol['student_steps']} steps (training seed {protocol['training_seed']}) against the same teacher, "
        f"fine-tuned for {protocol['teacher_steps']} steps to take given frames clean "
        "(`experiment=toy_teacher_prefix`); one of them starts half of its rollouts from real frames "
        "(`experiment=toy_prefix`, 1 or 8 frames). Values: mean +- half-range over the evaluation seeds. "
        "How to run it: `make continuation` (`python -m sfpp.apps.continuation --publish`).",
        "",
        "## Findings",
        "",
        *[f"- {finding}" for finding in continuation_findings(data)],
        "",
        "![FD to the real continuation and clean frames per horizon](continuation.png)",
    ]
    teachers = data.get("teachers")
    if teachers:
        names = list(next(iter(teachers.values())))
        lines += [
            "",
            "## The teacher before and after its fine-tune",
            "",
            "Its own one-horizon clips from noise, scored as in the study (same prompts and seeds): "
            "what taking given frames clean cost it.",
            "",
            "| teacher | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for key, entry in teachers.items():
            lines.append(f"| {key} | " + " | ".join(_cell(entry[name]) for name in names) + " |")
    for given, rows in data["results"].items():
        lines += ["", f"## Given {_label(given)}", ""]
        for metric, (title, up) in METRICS.items():
            better = (
                "real videos are the reference"
                if up is None
                else ("higher" if up else "lower") + " is better"
            )
            lines += [
                f"**{title}** ({better}), by horizon after the prefix",
                "",
                "| student | " + " | ".join(f"{h}x" for h in shown) + " |",
                "|---|" + "---|" * len(shown),
            ]
            for row, entry in rows.items():
                cells = [_cell(entry["horizons"][str(h)][metric]) for h in shown]
                lines.append(f"| {data['rows'][row]} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["**The seam** (1 = as the real clips at the same frames)", "", "| student | "]
        lines[-1] += " | ".join(SEAM.values()) + " |"
        lines.append("|---|" + "---|" * len(SEAM))
        for row, entry in rows.items():
            lines.append(
                f"| {data['rows'][row]} | " + " | ".join(_cell(entry["seam"][m]) for m in SEAM) + " |"
            )
        picture = data["pictures"].get(given)
        if picture:
            lines += ["", f"![frames given {_label(given)}]({picture})"]
    return "\n".join(lines) + "\n"
