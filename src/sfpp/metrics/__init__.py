"""Quality metrics of any generated video (tensors in, numbers out).

The built-in world's own scores (objects, shapes, the teacher diagnostics) are in :mod:`sfpp.world`.
"""

from sfpp.metrics.quality_curve import (
    FEATURE_NAMES,
    DynamicDegree,
    FeatureStatistics,
    FrechetParts,
    WindowQuality,
    feature_statistics,
    frechet_distance,
)
from sfpp.metrics.stability import (
    DEFAULT_TOLERANCES,
    DriftTolerance,
    VisualStability,
    stability_breakdown,
    stability_curve,
    stability_scores,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "FEATURE_NAMES",
    "DriftTolerance",
    "DynamicDegree",
    "FeatureStatistics",
    "FrechetParts",
    "VisualStability",
    "WindowQuality",
    "frechet_distance",
    "feature_statistics",
    "stability_breakdown",
    "stability_curve",
    "stability_scores",
]
