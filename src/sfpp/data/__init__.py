"""Data: prompt lists for DMD and GRPO, ODE pairs (writing and reading), resumable loaders.

The built-in world's data is in :mod:`sfpp.world`.
"""

from sfpp.data.ode_pairs import OdePairGenerator, OdePairSettingsError, OdePairWriter
from sfpp.data.ode_pairs_data import OdePairsDataModule, OdePairsDataset
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
