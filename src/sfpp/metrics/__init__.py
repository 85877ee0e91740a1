"""Quality metrics of generated videos (tensors in, numbers out)."""

from sfpp.metrics.quality_curve import DynamicDegree, WindowQuality, frechet_distance, real_feature_statistics
from sfpp.metrics.stability import (
    DEFAULT_TOLERANCES,
    DriftTolerance,
    VisualStability,
    stability_curve,
    stability_scores,
)
from sfpp.metrics.word_swap import (
    ATTRIBUTES,
    denoiser_word_choice,
    denoiser_word_use,
    first_object_variants,
    swap_attribute,
)
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
    "ATTRIBUTES",
    "DEFAULT_TOLERANCES",
    "DriftTolerance",
    "DynamicDegree",
    "ShapeThresholds",
    "VideoObjectStats",
    "VisualStability",
    "WindowQuality",
    "WorldObjectScore",
    "classify_shape",
    "denoiser_word_choice",
    "denoiser_word_use",
    "first_object_variants",
    "fit_shape_thresholds",
    "frechet_distance",
    "label_colours",
    "real_feature_statistics",
    "score_videos",
    "stability_curve",
    "stability_scores",
    "swap_attribute",
]
