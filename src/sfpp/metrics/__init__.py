"""Quality metrics of generated videos (tensors in, numbers out)."""

from sfpp.metrics.ideal_denoiser import (
    ObjectTemplates,
    OneObjectClips,
    denoiser_excess_error,
    ideal_x0,
    object_templates,
    one_object_clips,
    shape_handover,
)
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
    "ObjectTemplates",
    "OneObjectClips",
    "ShapeThresholds",
    "VideoObjectStats",
    "VisualStability",
    "WindowQuality",
    "WorldObjectScore",
    "classify_shape",
    "denoiser_excess_error",
    "denoiser_word_choice",
    "denoiser_word_use",
    "first_object_variants",
    "fit_shape_thresholds",
    "frechet_distance",
    "ideal_x0",
    "label_colours",
    "object_templates",
    "one_object_clips",
    "real_feature_statistics",
    "score_videos",
    "shape_handover",
    "stability_curve",
    "stability_scores",
    "swap_attribute",
]
