"""Metrics of generated videos: a pluggable set, evaluated per prompt segment.

A metric is a callable ``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict[str, float]``
(:class:`~sfpp.world.objects.WorldObjectScore`, :class:`MeanFlowMagnitude`), or a
torchmetrics-style object with ``update(videos)`` and ``compute()`` (reset before each use). Results
are flattened to ``"<name>/<key>"`` (``"<name>"`` for a scalar).

A video with prompt switches is scored segment by segment (each segment against its own prompt)
and the video's number is the frame-weighted mean over segments. A metric that does not apply to a
segment (a prompt outside the built-in world's grammar for the object score, a segment too short
for optical flow) raises ``ValueError``; that segment is left out of the mean and the reason is
reported, never dropped silently.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfpp.metrics.flow import dense_flow, flow_magnitudes

__all__ = ["MeanFlowMagnitude", "MetricFn", "SegmentScores", "evaluate_metric", "evaluate_segments"]

log = logging.getLogger(__name__)

MetricFn = Callable[[torch.Tensor, Sequence[str]], Mapping[str, Any]]
"""``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> {name: number}``."""


class MeanFlowMagnitude:
    """Mean optical-flow magnitude of videos, in pixels per (recorded) frame.

    Args:
        method: ``"dis"`` or ``"farneback"`` (see :func:`sfpp.metrics.flow.dense_flow`).
        upscale: Nearest-neighbour enlargement before the flow is computed (4 suits 16x16 frames;
            use 1 for frames of a hundred pixels or more).
    """

    def __init__(self, method: str = "dis", upscale: int = 4) -> None:
        self.method = method
        self.upscale = upscale

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """``{"mean_flow_px": mean over videos and frame pairs of the mean flow magnitude}``.

        Raises:
            ValueError: If a video has fewer than 2 frames.
        """
        per_video = [
            float(flow_magnitudes(dense_flow(video, self.method, self.upscale)).mean()) for video in videos
        ]
        return {"mean_flow_px": float(np.mean(per_video))}


def _as_number(value: Any, name: str) -> float | None:
    """A metric value (number, 0-d tensor or array) as a float; ``None`` for NaN (undefined, JSON ``null``)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        if int(np.prod(value.shape)) != 1:
            raise TypeError(f"metric {name} returned a non-scalar value of shape {tuple(value.shape)}")
        value = value.item()
    number = float(value)
    return None if math.isnan(number) else number


def evaluate_metric(
    metric: Any, name: str, videos: torch.Tensor, prompts: Sequence[str]
) -> dict[str, float | None]:
    """Run one metric and flatten its result to ``{"<name>/<key>": float}`` (``None`` for NaN: undefined).

    Args:
        metric: A ``MetricFn`` or an object with ``update(videos)`` and ``compute()``.
        name: Its name in the config.
        videos: ``(B, 3, F, H, W)`` in ``[-1, 1]``.
        prompts: One prompt per video.

    Raises:
        ValueError: When the metric does not apply to these videos (raised by the metric).
    """
    if hasattr(metric, "update") and hasattr(metric, "compute"):
        if hasattr(metric, "reset"):
            metric.reset()
        metric.update(videos)
        result = metric.compute()
    else:
        result = metric(videos, prompts)
    if isinstance(result, Mapping):
        return {f"{name}/{key}": _as_number(value, f"{name}/{key}") for key, value in result.items()}
    return {name: _as_number(result, name)}


@dataclass
class SegmentScores:
    """Metrics of one prompt segment of a video.

    Attributes:
        prompt: The segment's prompt.
        start_frame: First decoded frame of the segment.
        num_frames: Decoded frames of the segment.
        num_metric_frames: Recorded frames the metrics saw.
        metrics: ``{"<name>/<key>": value}`` (``None``: undefined, e.g. shape accuracy without objects).
        skipped: ``{name: reason}`` for metrics that did not apply.
    """

    prompt: str
    start_frame: int
    num_frames: int
    num_metric_frames: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def evaluate_segments(
    metrics: Mapping[str, Any],
    segments: Sequence[tuple[str, int, int]],
    frames_of: Callable[[int, int], torch.Tensor],
) -> tuple[dict[str, float | None], list[SegmentScores], dict[str, str]]:
    """Score each prompt segment with every metric and take frame-weighted means.

    Args:
        metrics: ``{name: metric}``.
        segments: ``(prompt, start_frame, end_frame)`` in decoded frames.
        frames_of: ``(start, end) -> (3, n, h, w)``, the recorded frames of a span.

    Returns:
        ``(means, per_segment, skipped)``: the frame-weighted mean of every value over the segments
        where it is defined (``None`` where it is nowhere), the per-segment scores, and ``{name: reason}`` for each metric that did
        not apply to some segment (the first reason).
    """
    per_segment = []
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for prompt, start, end in segments:
        video = frames_of(start, end)  # (3, n, h, w)
        scores = SegmentScores(prompt, start, end - start, num_metric_frames=video.shape[1])
        for name, metric in metrics.items():
            try:
                values = evaluate_metric(metric, name, video[None], [prompt])  # (1, 3, n, h, w)
            except ValueError as error:
                scores.skipped[name] = str(error)
                skipped.setdefault(name, str(error))
                log.warning("metric %s skipped on frames [%d, %d): %s", name, start, end, error)
                continue
            scores.metrics.update(values)
            for key, value in values.items():
                if value is None:
                    continue
                totals[key] = totals.get(key, 0.0) + value * (end - start)
                weights[key] = weights.get(key, 0) + (end - start)
        per_segment.append(scores)
    keys = dict.fromkeys(key for scores in per_segment for key in scores.metrics)  # in first-seen order
    means = {key: totals[key] / weights[key] if key in totals else None for key in keys}
    return means, per_segment, skipped
