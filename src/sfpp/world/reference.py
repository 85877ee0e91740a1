"""Reference statistics of real clips of the built-in world, for :class:`~sfpp.metrics.WindowQuality`."""

from __future__ import annotations

import functools

import numpy as np

from sfpp.metrics.quality_curve import FeatureStatistics, feature_statistics
from sfpp.utils.seeding import derive_seed
from sfpp.world.scene import DEFAULT_WORLD, WorldSpec, render, sample_spec

__all__ = ["world_feature_statistics"]


@functools.lru_cache(maxsize=8)
def world_feature_statistics(
    num_clips: int = 48,
    clip_frames: int = 32,
    seed: int = 0,
    world: WorldSpec = DEFAULT_WORLD,
    flow_method: str = "dis",
    flow_upscale: int = 4,
) -> FeatureStatistics:
    """Feature statistics of clips rendered from the built-in world (cached per argument set).

    Clip ``i`` shows :func:`~sfpp.world.scene.sample_spec` ``(derive_seed(seed, i))`` from a start
    frame drawn from ``np.random.default_rng(seed)`` in ``[0, 1000)``, so both background kinds, one
    and two objects and every phase of the motion are represented.

    Args:
        num_clips: Number of clips.
        clip_frames: Frames per clip (``>= 2``).
        seed: Seed of the clips.
        world: World settings.
        flow_method: Optical-flow method of the motion feature.
        flow_upscale: Optical-flow upscaling factor.

    Returns:
        Read-only statistics over ``num_clips * clip_frames`` frames.

    Raises:
        ValueError: If ``num_clips < 2`` or ``clip_frames < 2``.
    """
    if num_clips < 2 or clip_frames < 2:
        raise ValueError(f"need num_clips >= 2 and clip_frames >= 2, got {num_clips} and {clip_frames}")
    starts = np.random.default_rng(seed).integers(0, 1000, size=num_clips)
    clips = (
        render(sample_spec(derive_seed(seed, index), world), clip_frames, int(start))
        for index, start in enumerate(starts)
    )
    return feature_statistics(clips, flow_method, flow_upscale)
