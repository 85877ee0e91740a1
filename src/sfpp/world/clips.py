"""The world's teacher horizon and its ground-truth clips, shared by the applications and reports."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sfpp.world.grammar import heldout_prompts
from sfpp.world.scene import render, spec_from_prompt

__all__ = ["HORIZON", "ground_truth", "heldout_clips"]

#: The toy teacher's horizon in latent (= pixel, for the pixel codec) frames.
HORIZON = 8


def ground_truth(prompts: Sequence[str], num_frames: int, seed: int = 0) -> torch.Tensor:
    """Real videos of the world for the prompts, ``(B, 3, F, H, W)`` in ``[-1, 1]``.

    Video ``i`` is drawn by :func:`~sfpp.world.scene.spec_from_prompt` with seed ``seed + i``.
    """
    specs = [spec_from_prompt(prompt, seed=seed + index) for index, prompt in enumerate(prompts)]
    return torch.stack([torch.from_numpy(render(spec, num_frames)) for spec in specs])


def heldout_clips(count: int = 8, num_frames: int = HORIZON, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real clips of the first ``count`` held-out prompts, ``{prompt: (3, F, H, W)}`` in ``[-1, 1]``.

    Clip ``i`` is :func:`ground_truth` of prompt ``i`` with seed ``seed + i``: clips to start a
    stream from (``python -m sfpp.serve``) that no training run of the world has seen.
    """
    prompts = heldout_prompts()[:count]
    videos = ground_truth(prompts, num_frames, seed=seed)
    return {prompt: video for prompt, video in zip(prompts, videos, strict=True)}
