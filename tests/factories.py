"""Tiny models, stages, data and trainers for the tests: each written once.

The pixel-space tiny model (``tiny`` flavour on 16x16 RGB frames as 4x4 patches, 3 channels, an
``x0`` head, chunks of 2 latent frames, SDPA) is what the stage tests train; the student stages
(:func:`tiny_dmd`, :func:`tiny_grpo`) take every setting as a keyword, the shared ones
(:class:`~sfpp.stages.student.StudentSettings`) sorted into ``student`` here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sfpp.codecs import PixelCodec
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.models import CausalWanDiT, build_model
from sfpp.stages.dmd import DMDModule
from sfpp.stages.grpo import GRPOModule
from sfpp.stages.student import StudentSettings
from sfpp.world import WorldDataModule, WorldTextEncoder

#: The pixel-space tiny model's fields on top of the ``tiny`` flavour.
TINY_PIXEL: dict[str, Any] = {"in_channels": 3, "out_channels": 3, "patch_size": (1, 4, 4)}
#: One latent frame of the pixel codec on 16x16 frames.
TINY_LATENT = (3, 16, 16)
#: The student stages' tests' few-step schedule.
SAMPLER = FewStepSampler.from_steps([1000, 750, 500, 250], shift=3.0)
STUDENT_FIELDS = frozenset(f.name for f in dataclasses.fields(StudentSettings))


def tiny_model(causal: bool = False, num_frames_per_chunk: int = 2, **overrides: Any) -> CausalWanDiT:
    """The pixel-space tiny :class:`CausalWanDiT` (``x0`` head, SDPA), with fields overridden."""
    fields = {**TINY_PIXEL, "attention_backend": "sdpa", "prediction_type": "x0", **overrides}
    return build_model("tiny", causal=causal, num_frames_per_chunk=num_frames_per_chunk, **fields)


def tiny_teacher_and_student(seed: int = 0) -> tuple[CausalWanDiT, CausalWanDiT]:
    """A bidirectional teacher and a causal student with the teacher's weights (an ODE-init stand-in)."""
    torch.manual_seed(seed)
    teacher = tiny_model(causal=False)
    student = tiny_model(causal=True)
    student.load_state_dict(teacher.state_dict())
    return teacher, student


def split_student(settings: dict[str, Any], **defaults: Any) -> tuple[StudentSettings, dict[str, Any]]:
    """``(StudentSettings of the shared keys over defaults, the stage's own keys)``."""
    shared = {**defaults, **{k: v for k, v in settings.items() if k in STUDENT_FIELDS}}
    return StudentSettings(**shared), {k: v for k, v in settings.items() if k not in STUDENT_FIELDS}


def tiny_dmd(**settings: Any) -> DMDModule:
    """A tiny DMD stage: teacher and student from :func:`tiny_teacher_and_student` unless given.

    Keywords are :class:`DMDModule`'s and :class:`StudentSettings`' (``seed=1``,
    ``accumulate_grad_batches=2`` ...); defaults: a rollout of 8 frames, a window of 4, AdamW,
    one critic step per generator step, guidance 2, a cache of 4 frames, the EMA from step 0.
    """
    teacher, generator = settings.pop("teacher", None), settings.pop("generator", None)
    if teacher is None or generator is None:
        pair = tiny_teacher_and_student()
        teacher, generator = teacher or pair[0], generator or pair[1]
    student, own = split_student(settings, latent_shape=TINY_LATENT, cache_window_frames=4, ema_start_step=0)
    optimizer = own.pop("optimizer", lambda params: torch.optim.AdamW(params, lr=1e-3, betas=(0.0, 0.999)))
    stage = dict(
        text_encoder=WorldTextEncoder(embed_dim=16),
        codec=PixelCodec(),
        sampler=SAMPLER,
        generator_optimizer=optimizer,
        critic_optimizer=optimizer,
        rollout_frames=8,
        window_frames=4,
        critic_updates_per_generator=1,
        critic_warmup_steps=0,
        real_guidance_scale=2.0,
    )
    return DMDModule(generator=generator, teacher=teacher, student=student, **{**stage, **own})


def tiny_grpo(**settings: Any) -> GRPOModule:
    """A tiny GRPO stage (keywords: :class:`GRPOModule`'s and :class:`StudentSettings`').

    Defaults: a fresh tiny student (seed 0), a rollout of 4 frames, groups of 4, Adam at 3e-3, no
    KL term, a cache of 4 frames; ``reward`` must be given.
    """
    if "generator" not in settings:
        torch.manual_seed(0)
        settings["generator"] = tiny_model(causal=True)
    student, own = split_student(settings, latent_shape=TINY_LATENT, cache_window_frames=4)
    stage = dict(
        text_encoder=WorldTextEncoder(embed_dim=16),
        codec=PixelCodec(),
        sampler=FewStepSampler.from_steps((1000, 750, 500, 250), shift=5.0),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        rollout_frames=4,
        group_size=4,
        kl_weight=0.0,
    )
    return GRPOModule(student=student, **{**stage, **own})


def world_data(batch_size: int = 2, num_frames: int = 1, seed: int = 0, **kw: Any) -> WorldDataModule:
    """The built-in world's data module (prompts; clips of ``num_frames`` frames)."""
    return WorldDataModule(num_frames=num_frames, batch_size=batch_size, seed=seed, **kw)


def cpu_trainer(root: Path, max_steps: int, **kw: Any) -> L.Trainer:
    """A quiet deterministic single-process CPU trainer."""
    settings = dict(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        deterministic=True,
    )
    return L.Trainer(**{**settings, **kw})
