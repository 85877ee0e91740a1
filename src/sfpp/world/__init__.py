"""The built-in procedural world: videos, prompts, data, text encoder, scores and teacher diagnostics.

A world of coloured shapes bouncing on dark backgrounds, small enough that a 2-core CPU trains a
teacher and every stage of the method on it. Nothing in the library core (:mod:`sfpp.models`,
:mod:`sfpp.diffusion`, :mod:`sfpp.stages`, :mod:`sfpp.metrics`, :mod:`sfpp.inference`,
:mod:`sfpp.codecs`, :mod:`sfpp.text`) imports this package; it plugs into the core through the
configs (``data=world``, ``text=world``, ``stage.x0_target``) like any user's data would.

Modules:

* :mod:`~sfpp.world.grammar`: palette, shapes, backgrounds, the prompt grammar and its split;
* :mod:`~sfpp.world.scene`: video specifications and the renderer;
* :mod:`~sfpp.world.datamodule`: seeded clip datasets and the teacher's LightningDataModule;
* :mod:`~sfpp.world.targets`: exact posterior-mean regression targets of single frames;
* :mod:`~sfpp.world.text`: the vocabulary's small text encoder;
* :mod:`~sfpp.world.objects`: the object score (objects found, whole, of the prompted shape);
* :mod:`~sfpp.world.reference`: feature statistics of real clips for
  :class:`~sfpp.metrics.WindowQuality`;
* :mod:`~sfpp.world.clips`: the world's horizon and its ground-truth clips, shared by the apps;
* teacher diagnostics: :mod:`~sfpp.world.teacher_sampler`, :mod:`~sfpp.world.ideal_denoiser`,
  :mod:`~sfpp.world.word_swap` and their report (``python -m sfpp.world.report``).
"""

from sfpp.world.clips import HORIZON, ground_truth, heldout_clips
from sfpp.world.datamodule import ImagesThenVideos, WorldDataModule, WorldVideoDataset
from sfpp.world.grammar import (
    BACKGROUNDS,
    COLOURS,
    PALETTE,
    SHAPES,
    VOCABULARY,
    PromptContent,
    all_prompts,
    format_prompt,
    heldout_prompts,
    parse_prompt,
    prompt_words,
    train_prompts,
)
from sfpp.world.objects import (
    ShapeThresholds,
    VideoObjectStats,
    WorldObjectScore,
    classify_shape,
    fit_shape_thresholds,
    label_colours,
    score_videos,
)
from sfpp.world.reference import world_feature_statistics
from sfpp.world.scene import (
    DEFAULT_WORLD,
    BackgroundSpec,
    ObjectSpec,
    VideoSpec,
    WorldSpec,
    frame_layout,
    prompt_of,
    render,
    sample_spec,
    shape_mask,
    spec_from_prompt,
)
from sfpp.world.targets import WorldPosteriorTarget, placement_log_prior, placement_masks
from sfpp.world.teacher_sampler import TeacherClipSampler
from sfpp.world.text import WorldTextEncoder

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_WORLD",
    "HORIZON",
    "PALETTE",
    "SHAPES",
    "VOCABULARY",
    "BackgroundSpec",
    "ImagesThenVideos",
    "ObjectSpec",
    "PromptContent",
    "ShapeThresholds",
    "TeacherClipSampler",
    "VideoObjectStats",
    "VideoSpec",
    "WorldDataModule",
    "WorldObjectScore",
    "WorldPosteriorTarget",
    "WorldSpec",
    "WorldTextEncoder",
    "WorldVideoDataset",
    "all_prompts",
    "classify_shape",
    "fit_shape_thresholds",
    "format_prompt",
    "frame_layout",
    "ground_truth",
    "heldout_clips",
    "heldout_prompts",
    "label_colours",
    "parse_prompt",
    "placement_log_prior",
    "placement_masks",
    "prompt_of",
    "prompt_words",
    "render",
    "sample_spec",
    "score_videos",
    "shape_mask",
    "spec_from_prompt",
    "train_prompts",
    "world_feature_statistics",
]
