"""What the data-free student stages (extended DMD, GRPO) share.

Both train a block-causal student by rolling it out through its rolling KV cache, condition it on
prompts only, draw every random number from a generator seeded by ``(seed, step)`` so that a
resumed run continues exactly, keep an EMA copy for samples, and validate by streaming the EMA
student on held-out prompts and scoring the videos. :class:`StudentStage` holds those parts; the
stages add their own ``training_step`` and optimisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from sfpp.diffusion.rollout import FewStepSampler, rollout_from_seed
from sfpp.models.ema import EMA
from sfpp.stages.checkpoints import plain_hyperparameters, prime_optimizer_state
from sfpp.stages.components import freeze, move_plain_components
from sfpp.stages.draws import rows_of_global_batch

__all__ = ["StudentStage"]


class StudentStage(L.LightningModule):
    """Base of the stages that train a causal student from prompts alone.

    Args:
        generator: The block-causal student.
        text_encoder: Frozen prompt encoder, ``list[str] -> (embeddings, mask)``.
        codec: Latents to pixels.
        sampler: The student's few-step schedule.
        latent_shape: ``(C, h, w)`` of one latent frame.
        cache_window_frames: Past frames kept by the rolling KV cache.
        sink_frames: Frames from the start kept in the cache.
        ema_decay: Decay of the student's EMA (used for samples and validation).
        ema_start_step: Updates before the EMA starts averaging.
        seed: Base seed of the per-step random draws.
        mixed_precision: bf16 compute under FSDP2 on CUDA (the cache is then bf16 too).
        quality_metric: Optional ``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict``
            logged as ``val/<name>`` on EMA-student rollouts of ``val_rollout_frames``.
        val_rollout_frames: Length of the validation rollouts in latent frames.
        negative_prompt: The prompt of the unconditional side of classifier-free guidance (``""``:
            the empty prompt).
    """

    def __init__(
        self,
        generator: nn.Module,
        text_encoder: nn.Module,
        codec: Any,
        sampler: FewStepSampler,
        latent_shape: tuple[int, int, int],
        cache_window_frames: int,
        sink_frames: int = 0,
        ema_decay: float = 0.99,
        ema_start_step: int = 0,
        seed: int = 0,
        mixed_precision: bool = False,
        quality_metric: Callable[..., dict[str, float]] | None = None,
        val_rollout_frames: int | None = None,
        negative_prompt: str = "",
    ) -> None:
        super().__init__()
        self.generator = generator
        self.text_encoder = freeze(text_encoder)
        self.codec = codec
        self.sampler = sampler
        self.ema = EMA(generator, decay=ema_decay, start_step=ema_start_step)
        self.latent_shape = tuple(latent_shape)
        self.cache_window_frames = cache_window_frames
        self.sink_frames = sink_frames
        self.seed = seed
        self.quality_metric = quality_metric
        self.val_rollout_frames = val_rollout_frames
        self.negative_prompt = negative_prompt
        # Under the bf16 policy the blocks compute in bf16 while the sharded parameters stay float32.
        self._cache_dtype = torch.bfloat16 if mixed_precision else None

    # -- setup -----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Move plain-object components (umT5, the Wan VAE) to the training device."""
        move_plain_components(self.device, self.text_encoder, self.codec)

    def _rng(self, step: int) -> torch.Generator:
        """The generator of every random draw of optimisation step ``step`` (resume-safe)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

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
            *self.latent_shape[1:],
            window_frames=self.cache_window_frames,
            sink_frames=self.sink_frames,
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
        """Plain hyperparameters: the checkpoint loads with ``weights_only=True``."""
        plain_hyperparameters(checkpoint)

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
            self.latent_shape,
            self.sampler,
            seed=self.seed if seed is None else seed,
            window_frames=self.cache_window_frames,
            sink_frames=self.sink_frames,
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
        videos = self.sample_videos(prompts, self.val_rollout_frames, (0, 0), seed=self.seed + batch_idx)
        for name, value in self.validation_metrics(videos.cpu(), prompts).items():
            self.log(f"val/{name}", value, batch_size=len(prompts))
