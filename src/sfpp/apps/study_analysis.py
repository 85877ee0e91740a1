"""Where a study run's distance to real clips comes from: the analyses its results pages end with.

* :func:`where_quality_goes`: when the 20x-within-10% target is missed, each continuation's distance
  by horizon, the share of its 1x-to-20x rise reached early, and whether its object score holds;
* :func:`distance_parts`: when the scores hold the parts of the distance
  (:data:`~sfpp.apps.study_metrics.FD_PARTS`), its mean and covariance terms and every frame
  feature's shift from real clips;
* :func:`stability_at_first_horizon`: which stability component lowers each row at 1x;
* :func:`pictures_section`: how the pictures were chosen and their numbers;
* :func:`before_and_after`: an earlier run's distances beside this run's.

All read a run's ``results.json`` and return Markdown lines (empty when they do not apply).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sfpp.apps.study_metrics import METRICS, mean_and_spread, shift_metric, stability_part
from sfpp.apps.study_report import REAL_LABEL, SF_CONTINUED, SFPP_CONTINUED, TEACHER_LABEL
from sfpp.metrics.quality_curve import FEATURE_NAMES
from sfpp.metrics.stability import COMPONENTS

__all__ = [
    "before_and_after",
    "distance_parts",
    "pictures_section",
    "stability_at_first_horizon",
    "where_quality_goes",
]


def where_quality_goes(data: Mapping[str, Any]) -> list[str]:
    """Where a student's Frechet distance rises between 1x and 20x, when the 20x-within-10% target fails.

    For each continuation: its distance at every horizon, the share of the 1x-to-20x rise reached by
    the second horizon of the protocol, and the object score's three numbers at 1x and 20x beside it.
    """
    target = data.get("target", {}).get("sfpp_fd_20x_within_10pct_of_1x")
    horizons = [str(h) for h in data["protocol"]["horizons"]]
    if target is None or target["passed"] or "1" not in horizons or "20" not in horizons:
        return []
    second = horizons[1]
    lines = ["", "## Where the distance is lost", ""]
    held = ""
    for method in (SFPP_CONTINUED, SF_CONTINUED):
        if method not in data["methods"]:
            continue
        entry = data["methods"][method]["horizons"]
        means = {(h, m): cell["mean"] for h, cells in entry.items() for m, cell in cells.items()}
        fd = {h: means[h, "quality_fd"] for h in horizons if (h, "quality_fd") in means}
        rise = fd["20"] - fd["1"]
        path = " -> ".join(f"{fd[h]:.1f} ({h}x)" for h in fd)
        text = f"- **{method}**: FD to real {path}"
        if rise > 0 and second in fd:
            text += f"; {100 * (fd[second] - fd['1']) / rise:.0f}% of the rise to 20x is reached by {second}x"
        objects = [
            m for m in ("clean_frames", "detected", "shape_accuracy") if m in entry["1"] and m in entry["20"]
        ]
        summary = ", ".join(f"{METRICS[m][0]} {means['1', m]:.2f} -> {means['20', m]:.2f}" for m in objects)
        lines.append(f"{text}. From 1x to 20x: {summary}.")
        holds = all(means["20", m] >= means["1", m] - 0.02 for m in objects)
        if method == SFPP_CONTINUED and objects and holds and rise > 0:
            held = (
                f"The object score of {method} does not fall from 1x to 20x (by more than 0.02) while its "
                "distance rises: the rise is in the frame features beyond objects and shapes (colour "
                "histogram, exposure, detail and noise, motion; `sfpp.metrics.WindowQuality`)."
            )
    if held:
        lines += ["", held]
    return lines


def _squared_shift(data: Mapping[str, Any], method: str, horizon: str, feature: str) -> float:
    """A feature's part of the mean term: the squared shift per evaluation seed, averaged over seeds and students."""
    key = shift_metric(feature)
    members = data["methods"][method]["members"]
    per_student = [mean_and_spread([v * v for v in data["scores"][m][horizon][key]])[0] for m in members]
    return mean_and_spread(per_student)[0]


def distance_parts(data: Mapping[str, Any]) -> list[str]:
    """What each row's Frechet distance is made of: its two terms, and every feature's shift from real.

    Shown when the scores hold the parts of ``quality_fd`` (:data:`sfpp.apps.study_metrics.FD_PARTS`),
    at the 1x, 20x and 50x horizons the run measured (its first and last without them). For every
    student row, a sentence names the features whose part of the mean term grew most up to 20x (or
    the last horizon).
    """
    methods = data["methods"]
    horizons = [str(h) for h in data["protocol"]["horizons"]]
    if not any("fd_mean_term" in cells for entry in methods.values() for cells in entry["horizons"].values()):
        return []
    shown = [h for h in horizons if h in ("1", "20", "50")]
    if len(shown) < 2:
        shown = [horizons[0], horizons[-1]]
    late = "20" if "20" in shown else shown[-1]
    students = [m for m in methods if m not in (REAL_LABEL, TEACHER_LABEL)]
    lines = [
        "",
        "## What the distance is made of",
        "",
        "The Frechet distance to real clips is a mean term (the squared distance between the window's "
        "mean frame features and the real clips', each feature standardised by the real spread) plus a "
        "covariance term (`sfpp.metrics.WindowQuality.parts`). Each cell below is the mean over "
        "evaluation seeds (and training seeds): mean term + covariance term.",
        "",
        "| model | " + " | ".join(f"{h}x" for h in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for method, entry in methods.items():
        cells = []
        for h in shown:
            parts = entry["horizons"].get(h, {})
            if "fd_mean_term" in parts:
                cells.append(f"{parts['fd_mean_term']['mean']:.1f} + {parts['fd_cov_term']['mean']:.1f}")
            else:
                cells.append("-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    letters = {method: chr(ord("A") + index) for index, method in enumerate(students)}
    columns = [(REAL_LABEL, late)] + [(m, h) for m in students for h in shown]
    lines += [
        "",
        "Each feature's shift: the window's mean of the feature minus the real clips', in real standard "
        "deviations (negative: lower than real; the real videos' own column is the finite-sample floor). "
        + "; ".join(f"{letter}: {method}" for method, letter in letters.items())
        + ".",
        "",
        "| feature | " + " | ".join(f"{letters.get(m, 'real')} {h}x" for m, h in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for feature in FEATURE_NAMES:
        key = shift_metric(feature)
        cells = [f"{methods[m]['horizons'][h][key]['mean']:+.2f}" for m, h in columns]
        lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    lines.append("")
    for method in students:
        entry = methods[method]["horizons"]
        rise = {
            term: entry[late][term]["mean"] - entry["1"][term]["mean"]
            for term in ("quality_fd", "fd_mean_term", "fd_cov_term")
        }
        growth = {
            f: _squared_shift(data, method, late, f) - _squared_shift(data, method, "1", f)
            for f in FEATURE_NAMES
        }
        top = sorted(growth, key=growth.get, reverse=True)[:3]
        named = ", ".join(
            f"{f} ({entry['1'][shift_metric(f)]['mean']:+.2f} -> {entry[late][shift_metric(f)]['mean']:+.2f}, "
            f"{growth[f]:+.2f})"
            for f in top
        )
        lines.append(
            f"- **{method}**: from 1x to {late}x the distance changes by {rise['quality_fd']:+.1f}: "
            f"{rise['fd_mean_term']:+.1f} in the mean term and {rise['fd_cov_term']:+.1f} in the covariance "
            f"term. The features whose part of the mean term grew most (shift at 1x -> {late}x, change of "
            f"its square): {named}."
        )
    return lines


def stability_at_first_horizon(data: Mapping[str, Any]) -> list[str]:
    """What lowers each row's stability at 1x: every component's score (``stability:<component>``).

    At 1x a video is scored on its first window alone, so only the temporal components (flicker,
    pulse, jitter, shake) and a frozen first window can lower it; the table shows which one does,
    for the references and every method (means over students and evaluation seeds).
    """
    rows = [(m, e["horizons"].get("1", {})) for m, e in data["methods"].items()]
    rows = [(m, cells) for m, cells in rows if stability_part("jitter") in cells]
    if not rows:
        return []
    shown = [c for c in COMPONENTS if any(cells[stability_part(c)]["mean"] < 99.95 for _, cells in rows)]
    lines = [
        "",
        "## What lowers stability at 1x",
        "",
        "Each component's score on the first window (100: no penalty; the stability score is their "
        "product). The first window is its own reference, so only what happens from frame to frame counts.",
        "",
        "| row | stability | " + " | ".join(shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for method, cells in rows:
        values = " | ".join(f"{cells[stability_part(c)]['mean']:.1f}" for c in shown)
        lines.append(f"| {method} | {cells['stability']['mean']:.1f} | {values} |")
    if TEACHER_LABEL in data["methods"] and shown:
        teacher = dict(rows)[TEACHER_LABEL]
        worst = min(shown, key=lambda c: teacher[stability_part(c)]["mean"])
        students = [
            (m, cells[stability_part(worst)]["mean"])
            for m, cells in rows
            if m not in (REAL_LABEL, TEACHER_LABEL)
        ]
        others = ", ".join(f"{m} {v:.1f}" for m, v in students)
        lines += [
            "",
            f"The teacher's clips lose most on **{worst}** ({teacher[stability_part(worst)]['mean']:.1f}; "
            f"{others}; real videos {dict(rows)[REAL_LABEL][stability_part(worst)]['mean']:.1f}).",
        ]
        grain = shift_metric("noise_level")
        if grain in teacher:
            levels = ", ".join(
                f"{m} {cells[grain]['mean']:+.1f}"
                for m, cells in rows
                if m not in (REAL_LABEL, TEACHER_LABEL)
            )
            students = [cells[grain]["mean"] for m, cells in rows if m not in (REAL_LABEL, TEACHER_LABEL)]
            grainier = bool(students) and teacher[grain]["mean"] > max(students)
            lines[-1] += (
                f" Beside it, the frames' noise level, as the distance's parts measure it (standardised "
                f"shift from real clips at 1x): the teacher's clips {teacher[grain]['mean']:+.1f}; {levels}. "
                + (
                    "The teacher's frames are the grainiest: grain that differs from frame to frame is "
                    "change that comes back, which jitter counts."
                    if grainier
                    else "The teacher's frames are not grainier than the students': their frames go back and "
                    "forth more from one to the next at the same noise level."
                )
            )
    return lines


def pictures_section(data: Mapping[str, Any]) -> list[str]:
    """How the study's pictures were chosen, and the numbers of the cases they show."""
    pictures = data.get("pictures")
    if not pictures:
        return []
    lines = [
        "",
        "## How the pictures were chosen",
        "",
        f"By rule, before looking: {pictures['rule']} (`sfpp.apps.study_pictures`). The horizon is "
        f"{pictures['horizon']}x. The strip above and the README's animation show:",
        "",
    ]
    for name, case in pictures["cases"].items():
        numbers = "; ".join(
            f"{label}: feature distance {v['feature_distance']:.1f}, stability {v['stability']:.0f}"
            for label, v in case["numbers"].items()
        )
        lines.append(
            f"- **{name}** difference ({case['difference']:+.1f}): '{case['prompt']}', evaluation seed "
            f"{case['seed']}. {numbers}."
        )
    return lines


def before_and_after(data: Mapping[str, Any], previous: Mapping[str, Any] | None, label: str) -> list[str]:
    """An earlier run's Frechet distances beside this run's, with the differences (this minus earlier)."""
    if previous is None:
        return []
    horizons = [
        h
        for h in (str(h) for h in data["protocol"]["horizons"])
        if h in previous["protocol"]["horizons"] or int(h) in previous["protocol"]["horizons"]
    ]
    lines = [
        "",
        f"## {label}",
        "",
        f"The run of {previous['measured']} (commit `{previous['commit']}`, `{previous['command']}`), "
        "trained before the fix; each cell: its FD to real, then this run's minus it (negative: "
        "closer to real now).",
        "",
        "![the run before the fix: quality against horizon](study_before_text_fix_quality_vs_horizon.png)",
        "",
        "| model | " + " | ".join(f"{h}x" for h in horizons) + " |",
        "|---|" + "---|" * len(horizons),
    ]
    for method, entry in previous["methods"].items():
        cells = []
        for h in horizons:
            old = entry["horizons"].get(h, {}).get("quality_fd")
            new = data["methods"].get(method, {}).get("horizons", {}).get(h, {}).get("quality_fd")
            if old is None:
                cells.append("-")
            elif new is None:
                cells.append(f"{old['mean']:.1f}")
            else:
                cells.append(f"{old['mean']:.1f} ({new['mean'] - old['mean']:+.1f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    checks = previous.get("target", {})
    if checks:
        lines += [
            "",
            "Its target checks: "
            + "; ".join(f"{'met' if c['passed'] else 'not met'}: {c['detail']}" for c in checks.values()),
        ]
    return lines
