"""The compute-scaling curve of ``make study``: each method's quality against its extra-step budget.

``python -m sfpp.apps.study --scaling-budgets 250 500 750`` keeps the first training seed's
continuations at every budget (:func:`sfpp.apps.study_stages.scaling_stages`); :func:`evaluate_scaling`
scores every point (the baseline at 0 steps, then Self-Forcing and Self-Forcing++ at each budget)
with the study's protocol (:func:`sfpp.apps.study_metrics.score_horizons`: the same held-out prompts,
evaluation seeds and real videos) and writes ``results.json`` and ``scaling.png`` under
``<study out>/scaling``.

The CPU minutes of a point are measured, not extrapolated: the time from the start of the stage
that wrote its checkpoint to the checkpoint's modification time (validation and checkpointing
included), plus the whole Self-Forcing continuation before it for a point of a carried-on stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from sfpp.apps.pipeline import git_commit, machine
from sfpp.apps.study_metrics import mean_and_spread, score_horizons
from sfpp.apps.study_stages import DMDSchedule, ScalingPoint
from sfpp.apps.study_videos import console, generate_batch, real_videos
from sfpp.world import HORIZON, heldout_prompts

__all__ = [
    "SCALING_METRICS",
    "evaluate_scaling",
    "plot_scaling",
    "point_minutes",
    "scaling_findings",
    "scaling_page",
    "summarise_scaling",
]

BASELINE = "Self-Forcing (baseline)"

#: The metrics the curve reports at every horizon.
SCALING_METRICS: tuple[str, ...] = ("quality_fd", "stability", "clean_frames")


def point_minutes(point: ScalingPoint, root: Path = Path(".")) -> float:
    """CPU minutes of training from the baseline to ``point`` (0 for the baseline itself).

    Args:
        point: A point of :func:`sfpp.apps.study_stages.scaling_points`.
        root: Repository root.

    Raises:
        FileNotFoundError: When the stage's record or the checkpoint is missing.
    """
    if point.budget == 0:
        return 0.0

    def started(stage: str) -> tuple[float, float]:
        record = root / "checkpoints" / stage / "last.ckpt.stage.json"
        seconds = float(json.loads(record.read_text())["seconds"])
        return record.stat().st_mtime - seconds, seconds

    start, _ = started(point.stage)
    minutes = (point.checkpoint.stat().st_mtime - start) / 60
    if point.stage.endswith("_scaling"):
        minutes += started(point.stage.removesuffix("_scaling"))[1] / 60
    return max(minutes, 0.0)


def summarise_scaling(points: Sequence[Mapping[str, Any]], horizons: Sequence[int]) -> dict[str, Any]:
    """Per method, the curve's numbers: each metric's mean and evaluation spread per budget, the 20x/1x ratio.

    Args:
        points: The ``points`` of the results (method, budget, scores per horizon and seed).
        horizons: Evaluation horizons.

    Returns:
        ``{method: [{"budget", "minutes", "generator_updates", metric@h: {"mean", "spread"}, ...,
        "fd_ratio_20x": {"mean", "spread"}}]}``, budgets ascending; the ratio is taken per
        evaluation seed (present when 1x and 20x were evaluated).
    """
    methods: dict[str, list[dict[str, Any]]] = {}
    for point in sorted(points, key=lambda p: p["budget"]):
        entry: dict[str, Any] = {k: point[k] for k in ("budget", "minutes", "generator_updates")}
        for metric in SCALING_METRICS:
            for horizon in horizons:
                mean, spread = mean_and_spread(point["scores"][str(horizon)][metric])
                entry[f"{metric}@{horizon}"] = {"mean": mean, "spread": spread}
        if 1 in horizons and 20 in horizons:
            ratios = np.asarray(point["scores"]["20"]["quality_fd"]) / np.asarray(
                point["scores"]["1"]["quality_fd"]
            )
            mean, spread = mean_and_spread(ratios.tolist())
            entry["fd_ratio_20x"] = {"mean": mean, "spread": spread}
        methods.setdefault(point["method"], []).append(entry)
    return methods


def plot_scaling(results: Mapping[str, Any], path: Path) -> Path:
    """FD at 1x / 20x / 50x and the 20x/1x ratio, against generator updates (top) and CPU minutes (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizons = [h for h in (1, 20, 50) if h in results["protocol"]["horizons"]]
    columns = len(horizons) + 1
    figure, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 7.2), constrained_layout=True)
    baseline = results["summary"].get(BASELINE, [])
    x_axes = (
        ("generator_updates", "generator updates after the baseline"),
        ("minutes", "CPU minutes after the baseline"),
    )
    for method, curve in results["summary"].items():
        if method == BASELINE:
            continue
        curve = baseline + curve  # every method starts from the baseline at 0 steps
        for row, (key, _) in enumerate(x_axes):
            x = [c[key] for c in curve]
            cells = [[c[f"quality_fd@{h}"] for c in curve] for h in horizons]
            if "fd_ratio_20x" in curve[0]:
                cells.append([c["fd_ratio_20x"] for c in curve])
            for axis, column in zip(axes[row], cells, strict=False):
                means, spreads = [c["mean"] for c in column], [c["spread"] for c in column]
                axis.errorbar(x, means, yerr=spreads, marker="o", capsize=3, label=method)
    for row, (_, label) in enumerate(x_axes):
        for axis, horizon in zip(axes[row], horizons, strict=False):
            axis.set_title(f"FD to real, window ending at {horizon}x (lower is better)", fontsize=9)
        axes[row][-1].axhline(1.0, color="0.4", linestyle="--", linewidth=1)
        axes[row][-1].axhline(1.1, color="0.6", linestyle=":", linewidth=1)
        axes[row][-1].set_title("FD at 20x / FD at 1x (target: within 1.1)", fontsize=9)
        for axis in axes[row]:
            axis.set_xlabel(label)
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluate_scaling(
    out: Path,
    teacher_ckpt: Path,
    points: Sequence[ScalingPoint],
    training: Mapping[str, Mapping[str, float]] | None = None,
    eval_seeds: Sequence[int] = (0, 1, 2),
    num_prompts: int = 16,
    horizons: Sequence[int] = (1, 5, 10, 20, 50),
    command: str = "python -m sfpp.apps.study",
    root: Path = Path("."),
    train_seed: int = 1,
    known: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every point of the curve and write ``results.json`` and ``scaling.png`` under ``out``.

    Args:
        out: Output directory.
        teacher_ckpt: The toy teacher (its text encoder conditions the students).
        points: The curve's points (:func:`sfpp.apps.study_stages.scaling_points`).
        training: The study's training costs (``training.json``), recorded beside the points.
        eval_seeds: Seeds of the evaluation videos.
        num_prompts: Held-out prompts per evaluation seed.
        horizons: Evaluation horizons.
        command: The command line recorded in the results.
        root: Repository root.
        train_seed: The training seed of the continuations on the curve.
        known: ``{(method, budget): scores}`` already measured with the same protocol on the same
            checkpoint (the study's baseline and first-seed continuations: generation is
            deterministic, so scoring them again would give the same numbers); those points are
            not generated again and say so (``"from_study": true``).

    Returns:
        The content of ``results.json``.

    Raises:
        FileNotFoundError: For a point whose checkpoint is missing (before anything is generated).
    """
    missing = [str(p.checkpoint) for p in points if not p.checkpoint.exists()]
    if missing:
        raise FileNotFoundError(
            f"scaling checkpoints missing (train with --scaling-budgets first): {missing}"
        )
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(heldout_prompts(2)[:num_prompts])
    num_frames = max(horizons) * HORIZON
    real = real_videos(prompts, num_frames, eval_seeds)
    base = DMDSchedule.from_checkpoint(points[0].checkpoint)
    known = dict(known or {})
    rows = []
    for point in points:
        scores = known.get((point.method, point.budget))
        if scores is None:
            console.rule(f"scaling: {point.method} after {point.budget} extra steps")
            videos = generate_batch(point.checkpoint, teacher_ckpt, prompts, num_frames, eval_seeds)
            scores = {str(h): v for h, v in score_horizons(videos, prompts, horizons, real).items()}
        rows.append(
            {
                "method": point.method,
                "budget": point.budget,
                "generator_updates": base.generator_updates(point.budget),
                "minutes": point_minutes(point, root),
                "checkpoint": str(point.checkpoint),
                "from_study": (point.method, point.budget) in known,
                "scores": dict(scores),
            }
        )
    results: dict[str, Any] = {
        "measured": date.today().isoformat(),
        "commit": git_commit(root),
        "command": command,
        "machine": machine(),
        "evaluation_minutes": (time.perf_counter() - began) / 60,
        "protocol": {
            "base_step": base.step,
            "train_seed": train_seed,
            "budgets": sorted({p.budget for p in points if p.budget > 0}),
            "prompts": len(prompts),
            "eval_seeds": list(eval_seeds),
            "horizons": list(horizons),
        },
        "training": dict(training or {}),
        "points": rows,
    }
    results["summary"] = summarise_scaling(rows, horizons)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_scaling(results, out / "scaling.png")
    console.print(f"scaling: {out / 'results.json'}, {out / 'scaling.png'}")
    return results


def _cell(entry: Mapping[str, float], digits: int = 1) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['spread']:.{digits}f}"


def scaling_findings(data: Mapping[str, Any]) -> list[str]:
    """What the curve says, by rule: where it flattens, whether 20x/1x approaches 1, the gap.

    Per method: where its 20x distance stops improving and whether its 20x/1x ratio approaches 1;
    then the gap between the methods at every budget. A step between two budgets counts as an improvement when the 20x distance falls by more than
    the sum of the two points' evaluation spreads; the curve *flattens* at the first budget after
    which no further step does.
    """
    summary = data["summary"]
    baseline = summary.get(BASELINE, [])
    lines = []
    for method, curve in summary.items():
        if method == BASELINE or "quality_fd@20" not in curve[0]:
            continue
        full = baseline + curve
        improving = [
            b["quality_fd@20"]["mean"]
            < a["quality_fd@20"]["mean"] - a["quality_fd@20"]["spread"] - b["quality_fd@20"]["spread"]
            for a, b in zip(full, full[1:], strict=False)
        ]
        last = max((i + 1 for i, up in enumerate(improving) if up), default=0)
        flat = (
            f"still improving at its largest budget ({full[-1]['budget']} steps)"
            if last == len(full) - 1
            else f"flat from {full[last]['budget']} extra steps on (no later step improves by more than the spreads)"
        )
        first, end = full[0], full[-1]
        ratio = ""
        if "fd_ratio_20x" in first:
            r0, r1 = first["fd_ratio_20x"], end["fd_ratio_20x"]
            closer = abs(r1["mean"] - 1) < abs(r0["mean"] - 1) - r0["spread"] - r1["spread"]
            ratio = (
                f"; FD 20x / 1x {r0['mean']:.2f} ± {r0['spread']:.2f} at {first['budget']} steps and "
                f"{r1['mean']:.2f} ± {r1['spread']:.2f} at {end['budget']}: "
                + ("it approaches 1" if closer else "it does not approach 1 beyond the spreads")
            )
        lines.append(
            f"- **{method}**: FD at 20x {_cell(first['quality_fd@20'])} at {first['budget']} steps, "
            f"{_cell(end['quality_fd@20'])} at {end['budget']}; {flat}{ratio}."
        )
    sf, sfpp = summary.get("Self-Forcing (continued)"), summary.get("Self-Forcing++ (continued)")
    if sf and sfpp:
        gaps = []
        theirs = {entry["budget"]: entry for entry in sfpp}
        for a in sf:
            b = theirs.get(a["budget"])
            if b is None:
                continue
            gap = a["quality_fd@20"]["mean"] - b["quality_fd@20"]["mean"]
            spread = a["quality_fd@20"]["spread"] + b["quality_fd@20"]["spread"]
            gaps.append(f"{a['budget']} steps {gap:+.1f} (spreads {spread:.1f})")
        lines.append(
            "- **Gap at 20x** (Self-Forcing minus Self-Forcing++, positive: Self-Forcing++ closer to real): "
            + ", ".join(gaps)
            + "."
        )
    return lines


def scaling_page(data: Mapping[str, Any]) -> str:
    """``docs/results/scaling.md`` from ``scaling.json``."""
    protocol = data["protocol"]
    horizons = [h for h in (1, 20, 50) if h in protocol["horizons"]]
    lines = [
        "<!-- generated by python -m sfpp.apps.results_pages from docs/results/scaling.json; do not edit -->",
        "# Compute scaling: quality against the extra-step budget",
        "",
        " ".join(
            [
                f"Measured {data['measured']}, commit `{data['commit']}`, `{data['command']}`. Evaluation "
                f"{data['evaluation_minutes']:.0f} min on {data['machine']}.",
                *data.get("notes", []),
            ]
        ),
        "",
        f"From the study's Self-Forcing baseline (step {protocol['base_step']}), the continuations of "
        f"training seed {protocol['train_seed']} kept a checkpoint at {protocol['budgets']} extra steps "
        "(one run per method, carried on past the study's budget from its last checkpoint). Each point "
        f"is scored with the study's protocol ({protocol['prompts']} held-out prompts x evaluation seeds "
        f"{protocol['eval_seeds']}, the window of one teacher horizon that ends at the column's "
        "horizon); a cell is the mean ± the spread over evaluation seeds. CPU minutes are the measured "
        "training time from the baseline to the checkpoint (validation included). The spread over "
        "training seeds at the study's budget is on [the study's page](study.md).",
        "",
        "![FD against budget](scaling.png)",
        "",
        "| method | extra steps | generator updates | CPU min | "
        + " | ".join(f"FD {h}x" for h in horizons)
        + " | FD 20x / 1x | stability 20x |",
        "|---|---|---|---|" + "---|" * len(horizons) + "---|---|",
    ]
    for method, curve in data["summary"].items():
        for entry in curve:
            cells = [_cell(entry[f"quality_fd@{h}"]) for h in horizons]
            ratio = _cell(entry["fd_ratio_20x"], 2) if "fd_ratio_20x" in entry else "-"
            stability = _cell(entry["stability@20"]) if "stability@20" in entry else "-"
            lines.append(
                f"| {method} | {entry['budget']} | {entry['generator_updates']} | {entry['minutes']:.1f} | "
                + " | ".join(cells)
                + f" | {ratio} | {stability} |"
            )
    lines += ["", "## What the curve says", "", *scaling_findings(data)]
    return "\n".join(lines) + "\n"
