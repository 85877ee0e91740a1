"""The study's pictures, chosen by a rule fixed before the run, not by eye.

The README's animation and the study's frame strip show a Self-Forcing and a Self-Forcing++
continuation (the first training seed's) on the same prompt, evaluation seed and noise, beside the
real video of that prompt. Which prompt and seed is decided by :func:`choose_cases`:

1. The horizon ``h*``: the evaluation horizon after 1x where the methods' Frechet distances to real
   clips differ most (Self-Forcing minus Self-Forcing++, the table's means).
2. Every video gets its *feature distance* on the window ending at ``h*``: the mean term of the
   Frechet distance on that video alone (:func:`feature_distance`; the squared standardised shift
   of its frame features from the real clips'), so that one video has one number.
3. The difference Self-Forcing minus Self-Forcing++ of every (evaluation seed, prompt) pair; the
   pictures show the pair at the median of those differences (the typical case) and the pair with
   the largest (the clearest case), each with its numbers written under it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfpp.metrics.quality_curve import WindowQuality
from sfpp.metrics.stability import stability_breakdown
from sfpp.world import HORIZON, world_feature_statistics

#: Heights in pixels of the animation's title and caption bars.
_TITLE, _CAPTION = 16, 30
#: Short labels for the animation's captions (its videos are a few hundred pixels wide).
_SHORT = {"Self-Forcing (continued)": "Self-Forcing", "Self-Forcing++ (continued)": "Self-Forcing++"}

__all__ = [
    "case_numbers",
    "choose_cases",
    "feature_distance",
    "gap_horizon",
    "write_case_gif",
    "write_case_strip",
]


def feature_distance(videos: torch.Tensor, horizon: int) -> np.ndarray:
    """The Frechet distance's mean term of each video alone on the window ending at ``horizon``: ``(B,)``.

    Args:
        videos: ``(B, 3, F, H, W)`` in ``[-1, 1]``, ``F >= horizon * K``.
        horizon: Evaluation horizon (1-based, in teacher horizons).
    """
    values = []
    for video in videos:
        quality = WindowQuality(world_feature_statistics, window_frames=HORIZON)
        quality.update(video[None, :, (horizon - 1) * HORIZON : horizon * HORIZON].float())
        values.append(float(quality.parts().mean_term[0]))
    return np.asarray(values)


def gap_horizon(results: Mapping[str, Any], first: str, second: str) -> int:
    """The horizon after 1x where ``first`` minus ``second`` in mean Frechet distance is largest."""
    horizons = [h for h in results["protocol"]["horizons"] if h > 1] or results["protocol"]["horizons"]

    def gap(h: int) -> float:
        methods = results["methods"]
        return (
            methods[first]["horizons"][str(h)]["quality_fd"]["mean"]
            - methods[second]["horizons"][str(h)]["quality_fd"]["mean"]
        )

    return max(horizons, key=gap)


def choose_cases(
    first: Mapping[int, np.ndarray], second: Mapping[int, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """The (evaluation seed, prompt) pairs at the median and at the largest of ``first - second``.

    Args:
        first: ``{seed: (B,)}`` per-video distances of the first method.
        second: The same for the second method (same seeds and prompts).

    Returns:
        ``{"median": {"seed", "prompt_index", "difference"}, "largest": {...}}``; the median case is
        the pair whose difference is nearest the median (the lower one on a tie).
    """
    pairs = [
        (seed, index, float(a - b))
        for seed in first
        for index, (a, b) in enumerate(zip(first[seed], second[seed], strict=True))
    ]
    differences = np.asarray([d for _, _, d in pairs])
    median = float(np.median(differences))
    at_median = min(range(len(pairs)), key=lambda i: (abs(differences[i] - median), differences[i]))
    largest = int(np.argmax(differences))
    return {
        name: {
            "seed": int(pairs[i][0]),
            "prompt_index": int(pairs[i][1]),
            "difference": float(differences[i]),
        }
        for name, i in (("median", at_median), ("largest", largest))
    }


def _window_stability(video: torch.Tensor, horizon: int) -> float:
    return float(
        stability_breakdown(video[:, : max(horizon, 1) * HORIZON], window_frames=HORIZON)["score"][
            horizon - 1
        ]
    )


def case_numbers(videos: Mapping[str, torch.Tensor], horizon: int) -> dict[str, dict[str, float]]:
    """``{label: {"feature_distance", "stability"}}`` of each ``(3, F, H, W)`` video on the window ending at ``horizon``."""
    return {
        label: {
            "feature_distance": float(feature_distance(video[None], horizon)[0]),
            "stability": _window_stability(video, horizon),
        }
        for label, video in videos.items()
    }


def write_case_strip(
    path: Path, cases: Sequence[Mapping[str, Any]], horizon: int, per_window: int = 4
) -> Path:
    """A PNG: per case, one row per video with frames of the windows at 1x and at ``horizon``, numbers beside.

    Args:
        path: Output PNG.
        cases: ``{"title", "videos": {label: (3, F, H, W)}, "numbers": {label: {...}}}`` per case
            (optionally ``"short"``, a shorter title for the animation).
        horizon: The chosen horizon ``h*``.
        per_window: Evenly spaced frames shown per window.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sum(len(case["videos"]) for case in cases)
    figure, axes = plt.subplots(rows, 1, figsize=(2.2 * per_window, 1.25 * rows + 0.6 * len(cases)))
    axes = np.atleast_1d(axes)
    row = 0
    for case in cases:
        for number, (label, video) in enumerate(case["videos"].items()):
            tiles = []
            for h in (1, horizon):
                frames = torch.linspace((h - 1) * HORIZON, h * HORIZON - 1, per_window).round().long()
                tiles += [
                    torch.cat(list(video[:, frames].unbind(dim=1)), dim=-1),
                    torch.ones(3, video.shape[2], 2),
                ]
            image = torch.cat(tiles[:-1], dim=-1)  # (3, H, 2 * per_window * W + 2)
            axis = axes[row]
            axis.imshow(((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            values = case["numbers"][label]
            axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            axis.set_xlabel(
                f"at {horizon}x: feature distance {values['feature_distance']:.1f}, stability {values['stability']:.0f}",
                fontsize=7,
            )
            if number == 0:
                axis.set_title(
                    f"{case['title']}  (left: window at 1x, right: window at {horizon}x)", fontsize=8
                )
            row += 1
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def write_case_gif(
    path: Path, cases: Sequence[Mapping[str, Any]], horizon: int, horizons_shown: int = 3, upscale: int = 8
) -> Path:
    """An animated GIF: per case a row of its videos side by side, over the horizons up to ``horizon``.

    Each row plays the last ``horizons_shown`` teacher horizons up to the end of the window at
    ``horizon``, under a title bar (the case's ``short`` title, else its ``title``, and the time in
    teacher horizons) and over a caption bar (every video's label, its feature distance ``d`` and
    its stability ``s`` on the window at ``horizon``).

    Args:
        path: Output ``.gif``.
        cases: As for :func:`write_case_strip`.
        horizon: The chosen horizon ``h*``.
        horizons_shown: Teacher horizons played.
        upscale: Nearest-neighbour enlargement.
    """
    from PIL import Image, ImageDraw

    from sfpp.io.video import to_uint8_frames

    stop = horizon * HORIZON
    start = max(0, stop - horizons_shown * HORIZON)
    blocks = []
    for case in cases:
        clips = [
            to_uint8_frames(video[:, start:stop], upscale) for video in case["videos"].values()
        ]  # (T, h, w, 3)
        gap = np.full((clips[0].shape[0], clips[0].shape[1], 4, 3), 255, dtype=np.uint8)
        row = np.concatenate([part for clip in clips for part in (clip, gap)][:-1], axis=2)  # (T, h, W, 3)
        title = np.full((row.shape[0], _TITLE, row.shape[2], 3), 255, dtype=np.uint8)
        caption = np.full((row.shape[0], _CAPTION, row.shape[2], 3), 255, dtype=np.uint8)
        blocks.append((np.concatenate([title, row, caption], axis=1), case))
    width = max(block.shape[2] for block, _ in blocks)
    frames = []
    for t in range(stop - start):
        canvas = Image.new("RGB", (width, sum(block.shape[1] for block, _ in blocks)), "white")
        draw = ImageDraw.Draw(canvas)
        y = 0
        for block, case in blocks:
            canvas.paste(Image.fromarray(block[t]), (0, y))
            labels = list(case["videos"])
            clip_width = (block.shape[2] + 4) // len(labels)
            bar = y + block.shape[1] - _CAPTION
            for index, label in enumerate(labels):
                numbers = case["numbers"][label]
                text = f"{_SHORT.get(label, label)}\nd {numbers['feature_distance']:.1f}  s {numbers['stability']:.0f}"
                draw.text((index * clip_width + 2, bar + 2), text, fill="black")
            horizon_now = (start + t + 1) / HORIZON
            draw.text((2, y + 2), f"{case.get('short', case['title'])}   {horizon_now:.1f}x", fill="black")
            y += block.shape[1]
        frames.append(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0, optimize=True)
    return path
