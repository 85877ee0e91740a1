"""Quality metrics of generated videos (tensors in, numbers out)."""

from sfpp.metrics.world_objects import (
    ShapeThresholds,
    VideoObjectStats,
    WorldObjectScore,
    classify_shape,
    fit_shape_thresholds,
    label_colours,
    score_videos,
)

__all__ = [
    "ShapeThresholds",
    "VideoObjectStats",
    "WorldObjectScore",
    "classify_shape",
    "fit_shape_thresholds",
    "label_colours",
    "score_videos",
]
