"""Data: the built-in procedural world and its LightningDataModule; prompt lists for DMD and GRPO."""

from sfpp.data.prompts import (
    PromptDataModule,
    PromptDataset,
    collate_prompts,
    make_prompt_sampler,
    read_prompts,
)
from sfpp.data.world import (
    COLOURS,
    DEFAULT_WORLD,
    SHAPES,
    VOCABULARY,
    BackgroundSpec,
    ObjectSpec,
    VideoSpec,
    WorldSpec,
    all_prompts,
    heldout_prompts,
    parse_prompt,
    prompt_of,
    render,
    sample_spec,
    spec_from_prompt,
    train_prompts,
)
from sfpp.data.world_datamodule import WorldDataModule, WorldVideoDataset

__all__ = [
    "PromptDataModule",
    "PromptDataset",
    "collate_prompts",
    "make_prompt_sampler",
    "read_prompts",
    "COLOURS",
    "DEFAULT_WORLD",
    "SHAPES",
    "VOCABULARY",
    "BackgroundSpec",
    "ObjectSpec",
    "VideoSpec",
    "WorldDataModule",
    "WorldSpec",
    "WorldVideoDataset",
    "all_prompts",
    "heldout_prompts",
    "parse_prompt",
    "prompt_of",
    "render",
    "sample_spec",
    "spec_from_prompt",
    "train_prompts",
]
