"""What the data-free student stages (extended DMD, GRPO) share.

Both train a block-causal student by rolling it out through its rolling KV cache, condition it on
prompts only, draw every random number from a generator seeded by ``(seed, step)`` so that a
resumed run continues exactly, keep an EMA copy for samples, and validate by streaming the EMA
student on held-out prompts and scoring the videos. :class:`StudentStage` holds those parts; the
stages add their own ``training_step`` and optimisers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from sfpp.diffusion.lengths import VideoTiming
from sfpp.diffusion.rollout import FewStepSampler, rollout_from_seed
from sfpp.models.config import config_of
from sfpp.models.ema import EMA
from sfpp.stages.checkpoints import plain_hyperparameters, prime_optimizer_state
from sfpp.stages.components import freeze, move_plain_components
from sfpp.stages.draws import STUDENT_STREAM, rows_of_global_batch, step_generator

__all__ = ["StudentSettings", "StudentStage"]

#: How a checkpoint written before the student stages drew from :func:`~sfpp.stages.draws.step_generator`
#: seeded its steps (``seed * 1_000_003 + step``); a run resumed from one keeps drawing that way.
LEGACY_DRAWS = "seed*1000003+step"
#: The scheme of every stage now (:func:`~sfpp.stages.draws.step_generator`).
STEP_DRAWS = "step_generator"


@dataclass(frozen=True)
class StudentSettings:
    """The settings every data-free student stage (extended DMD, GRPO) shares: the Hydra node ``stage.student``.

    Lengths (``val_rollout_frames``) are latent frames or seconds (``"100s"``, converted with
    ``fps`` and the codec's temporal stride, rounded down to whole chunks), parsed once by the stage.

    Args:
        latent_shape: ``(C, h, w)`` of one latent frame.
        cache_window_frames: Past frames kept by the rolling KV cache, on top of the current chunk
            (``None``: the stage's default, DMD's window or GRPO's rollout).
        sink_frames: Frames from the start of the video kept in the cache for ever.
        fps: Frame rate of the pixel video, for lengths given in seconds.
        seed: Base seed of the per-step random draws (:func:`~sfpp.stages.draws.step_generator`).
        ema_decay: Decay of the student's EMA (used for samples and validation).
        ema_start_step: Updates before the EMA starts averaging.
        grad_clip_norm: Gradient clipping of every trained network (``None``: off).
        accumulate_grad_batches: Batches whose gradients make one update: ``k`` batches of ``B``
            give the update of one batch of ``k x B``, every random draw dealt as for that batch
            (per-step draws shared, per-sample draws made for the whole batch, each batch keeping
            its rows). Optimisation steps, update schedules and ``max_steps`` count updates.
        mixed_precision: bf16 compute with float32 reduction and master weights, applied by the
            FSDP2 sharding of ``trainer=fsdp`` on CUDA (the cache is then bf16 too); an error on
            any other setup.
        activation_checkpointing: Recompute the trained networks' block activations in the
            backward pass (CUDA memory at the paper's scale; works anywhere).
        val_rollout_frames: Length of the validation rollouts (``None``: the stage's rollout).

    Raises:
        ValueError: For a latent shape that is not three sizes, negative sinks, an EMA decay
            outside ``[0, 1]`` or ``accumulate_grad_batches < 1``.
    """

    latent_shape: tuple[int, int, int] = (16, 60, 104)
    cache_window_frames: int | None = None
    sink_frames: int = 0
    fps: float = 16.0
    seed: int = 0
    ema_decay: float = 0.99
    ema_start_step: int = 0
    grad_clip_norm: float | None = 1.0
    accumulate_grad_batches: int = 1
    mixed_precision: bool = False
    activation_checkpointing: bool = False
    val_rollout_frames: int | str | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.latent_shape)
        object.__setattr__(self, "latent_shape", shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"student.latent_shape must be (C, h, w) of one latent frame, got {list(shape)}")
        if self.sink_frames < 0:
            raise ValueError(f"student.sink_frames must be >= 0, got {self.sink_frames}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"student.ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {self.accumulate_grad_batches}")

    @classmethod
    def parse(cls, value: StudentSettings | Mapping[str, Any] | None) -> StudentSettings:
        """Settings from a mapping of fields (a Hydra node), a :class:`StudentSettings` or ``None`` (defaults).

        Raises:
            ValueError: For keys that are not fields (listed with the known ones).
        """
        if value is None:
            return cls()
        if isinstance(value, StudentSettings):
            return value
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown stage.student settings {unknown}; the settings are {known}")
        values = {key: value[key] for key in value}
        if "latent_shape" in values:
            values["latent_shape"] = tuple(values["latent_shape"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain fields (what the checkpoint's hyperparameters keep)."""
        out = dataclasses.asdict(self)
        out["latent_shape"] = list(self.latent_shape)
        return out

    def timing(self, codec: Any, generator: nn.Module) -> VideoTiming:
        """The lengths' units for this codec and student (``fps``, temporal stride, chunk)."""
        config = config_of(generator)
        chunk = config.num_frames_per_chunk if config is not None else 1
        return VideoTiming(fps=self.fps, temporal_stride=codec.temporal_stride, num_frames_per_chunk=chunk)


class StudentStage(L.LightningModule):
    """Base of the stages that train a causal student from prompts alone.

    Args:
        generator: The block-causal student.
        text_encoder: Frozen prompt encoder, ``list[str] -> (embeddings, mask)``.
        codec: Latents to pixels.
        sampler: The student's few-step schedule.
        student: The shared settings (:class:`StudentSettings`).
        rollout_frames: The stage's training rollout in latent frames (parsed already).
        default_cache_window: Cache window when ``student.cache_window_frames`` is ``None``.
        quality_metric: Optional ``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict``
            logged as ``val/<name>`` on EMA-student rollouts of ``student.val_rollout_frames``.
        negative_prompt: The prompt of the unconditional side of classifier-free guidance (``""``:
            the empty prompt).
    """

    def __init__(
        self,
        generator: nn.Module,
        text_encoder: nn.Module,
        codec: Any,
        sampler: FewStepSampler,
        student: StudentSettings,
        rollout_frames: int,
        default_cache_window: int,
        quality_metric: Callable[..., dict[str, float]] | None = None,
        negative_prompt: str = "",
    ) -> None:
        super().__init__()
        self.generator = generator
        self.text_encoder = freeze(text_encoder)
        self.codec = codec
        self.sampler = sampler
        self.student = student
        self.ema = EMA(generator, decay=student.ema_decay, start_step=student.ema_start_step)
        # The settings resolved here; the others are read from self.student.
        self.rollout_frames = rollout_frames
        self.cache_window_frames = student.cache_window_frames or default_cache_window
        self.quality_metric = quality_metric
        val = student.val_rollout_frames
        self.val_rollout_frames = (
            rollout_frames if val is None else student.timing(codec, generator).parse_length(val)
        )
        self.negative_prompt = negative_prompt
        self.draws = STEP_DRAWS
        # Under the bf16 policy the blocks compute in bf16 while the sharded parameters stay float32.
        self._cache_dtype = torch.bfloat16 if student.mixed_precision else None

    # -- setup -----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Move plain-object components (umT5, the Wan VAE) to the training device."""
        move_plain_components(self.device, self.text_encoder, self.codec)

    def _rng(self, step: int) -> torch.Generator:
        """The generator of every random draw of optimisation step ``step`` (resume-safe).

        :func:`~sfpp.stages.draws.step_generator` on the student stream; a run resumed from a
        checkpoint of the earlier scheme (no ``draws`` entry) keeps that scheme, so it continues
        exactly as it would have.
        """
        if self.draws == LEGACY_DRAWS:
            return torch.Generator().manual_seed(self.student.seed * 1_000_003 + step)
        return step_generator(self.student.seed, STUDENT_STREAM, step)

    def _rows_of_global_batch(
        self, local_batch: int, micro_batch: int = 0, micro_batches: int = 1
    ) -> tuple[slice | None, int | None]:
        """``(batch_slice, global_batch)`` of this rank and micro-batch (:func:`~sfpp.stages.draws.rows_of_global_batch`)."""
        return rows_of_global_batch(self._trainer, local_batch, micro_batch, micro_batches)

    def _noise_fn(
        self, rng: torch.Generator, local_batch: int, micro_batch: int = 0, micro_batches: int = 1
    ) -> Callable[[tuple[int, ...]], torch.Tensor] | None:
        """Rollout noise of the whole global batch, this rank's and micro-batch's rows (``None``: the whole batch).

        N processes with a local batch B and k micro-batches thus draw the same noise as one process
        with the batch N * k * B.
        """
        batch_slice, global_batch = self._rows_of_global_batch(local_batch, micro_batch, micro_batches)
        if batch_slice is None:
            return None

        def noise_fn(shape: tuple[int, ...]) -> torch.Tensor:
            noise = torch.randn((global_batch, *shape[1:]), generator=rng, device=rng.device)
            return noise[batch_slice]

        return noise_fn

    def _contexts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings of ``prompts`` and of as many negative prompts (the unconditional side of CFG)."""
        with torch.no_grad():
            context = self.text_encoder(prompts)[0].to(self.device)
            null_context = self.text_encoder([self.negative_prompt] * len(prompts))[0].to(self.device)
        return context, null_context

    def _new_cache(self, model: nn.Module, batch: int) -> Any:
        """A fresh rolling KV cache of the stage's geometry for ``model``."""
        return model.new_kv_cache(
            batch,
            *self.student.latent_shape[1:],
            window_frames=self.cache_window_frames,
            sink_frames=self.student.sink_frames,
            dtype=self._cache_dtype,
        )

    def on_train_start(self) -> None:
        """Prime every optimiser's state (:func:`~sfpp.stages.checkpoints.prime_optimizer_state`).

        The critic's warm-up leaves the generator without optimiser state; a sharded checkpoint saved
        then would otherwise count a step it never took.
        """
        for optimizer in self.trainer.optimizers:
            prime_optimizer_state(optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Plain hyperparameters (the checkpoint loads with ``weights_only=True``) and the draw scheme."""
        plain_hyperparameters(checkpoint)
        checkpoint["draws"] = self.draws

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep drawing as the run that wrote ``checkpoint`` did (checkpoints without ``draws``: the earlier scheme)."""
        self.draws = checkpoint.get("draws", LEGACY_DRAWS)

    def _clip(self, module: nn.Module, name: str, max_norm: float | None, batch_size: int) -> None:
        """Clip the gradients of ``module`` to ``max_norm`` (``None``: off) and log their norm before clipping.

        ``clip_grad_norm_`` handles FSDP2's DTensor gradients: the norm is that of the whole
        (unsharded) gradient, reduced across ranks.
        """
        if max_norm is None:
            return
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in module.parameters() if p.grad is not None], max_norm
        )
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        self.log(f"train/{name}_grad_norm", norm, batch_size=batch_size)

    # -- sampling and validation -----------------------------------------------------------------

    @torch.no_grad()
    def sample_videos(
        self, prompts: list[str], num_frames: int, frame_size: tuple[int, int], seed: int | None = None
    ) -> torch.Tensor:
        """Stream videos of ``num_frames`` latent frames with the EMA student; ``(B, 3, F', H, W)``."""
        context, _ = self._contexts(prompts)
        latents = rollout_from_seed(
            self.ema.module,
            context,
            num_frames,
            self.student.latent_shape,
            self.sampler,
            seed=self.student.seed if seed is None else seed,
            window_frames=self.cache_window_frames,
            sink_frames=self.student.sink_frames,
            cache_dtype=self._cache_dtype,
        )
        return self.codec.decode(latents).clamp(-1, 1)

    def validation_metrics(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The numbers logged for validation videos (the quality metric's; stages may add more)."""
        if self.quality_metric is None:
            return {}
        return {name: float(value) for name, value in self.quality_metric(videos, prompts).items()}

    @property
    def validates(self) -> bool:
        """Whether validation has anything to measure (otherwise it skips the rollouts)."""
        return self.quality_metric is not None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score EMA-student rollouts of ``val_rollout_frames`` on the validation prompts."""
        if not self.validates:
            return
        prompts = list(batch["prompt"])
        videos = self.sample_videos(
            prompts, self.val_rollout_frames, (0, 0), seed=self.student.seed + batch_idx
        )
        for name, value in self.validation_metrics(videos.cpu(), prompts).items():
            self.log(f"val/{name}", value, batch_size=len(prompts))
