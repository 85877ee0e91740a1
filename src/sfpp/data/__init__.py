"""Data: the built-in procedural world and its LightningDataModule; prompt lists for DMD and GRPO; ODE pairs."""

from sfpp.data.ode_pairs import (
    OdePairGenerator,
    OdePairsDataModule,
    OdePairsDataset,
    OdePairSettingsError,
    OdePairWriter,
)
from sfpp.data.prompts import (
    PromptDataModule,
    PromptDataset,
    collate_prompts,
    make_prompt_sampler,
    read_prompts,
)

__all__ = [
    "PromptDataModule",
    "PromptDataset",
    "collate_prompts",
    "make_prompt_sampler",
    "read_prompts",
    "OdePairGenerator",
    "OdePairSettingsError",
    "OdePairWriter",
    "OdePairsDataModule",
    "OdePairsDataset",
]
