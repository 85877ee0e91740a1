"""The videos the study scores: a student's streamed rollouts, the teacher's clips and the world's real clips.

Shared by the study (:mod:`sfpp.apps.study`) and its scaling measurement (:mod:`sfpp.apps.scaling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

from sfpp.diffusion.rollout import rollout_from_seed
from sfpp.world import TeacherClipSampler, ground_truth

__all__ = ["console", "generate_batch", "real_videos", "teacher_videos"]

console = Console(highlight=False)


@torch.no_grad()
def generate_batch(
    checkpoint: Path, teacher_ckpt: Path, prompts: Sequence[str], num_frames: int, seeds: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Videos ``(B, 3, F, H, W)`` of a student for the prompts, one batched streaming rollout per seed."""
    from sfpp.generate import load_generator

    generator = load_generator(checkpoint, teacher_ckpt=str(teacher_ckpt), device="cpu", progress=False)
    context = generator.text_encoder(list(prompts))[0]
    videos = {}
    for seed in seeds:
        latents = rollout_from_seed(
            generator.model,
            context,
            num_frames,
            generator.latent_shape,
            generator.sampler,
            seed=seed,
            window_frames=generator.cache_window_frames,
            sink_frames=generator.sink_frames,
        )
        videos[seed] = generator.codec.decode(latents).clamp(-1, 1)
    return videos


@torch.no_grad()
def teacher_videos(
    teacher_ckpt: Path, prompts: Sequence[str], seeds: Sequence[int]
) -> dict[int, torch.Tensor]:
    """The teacher's own clips ``(B, 3, K, H, W)`` of one horizon (the sampler that wrote the ODE pairs)."""
    sample = TeacherClipSampler.from_checkpoint(teacher_ckpt)
    return {seed: sample(prompts, seed) for seed in seeds}


def real_videos(prompts: Sequence[str], num_frames: int, seeds: Sequence[int]) -> dict[int, torch.Tensor]:
    """Real videos ``(B, 3, F, H, W)`` of the world for the prompts; each seed draws other scenes."""
    return {seed: ground_truth(prompts, num_frames, seed=seed * len(prompts)) for seed in seeds}
