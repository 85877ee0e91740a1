"""Stage 1: ODE init, regress the block-causal few-step student onto the teacher's ODE trajectories.

Each training pair (:mod:`sfpp.data.ode_pairs`) holds one teacher trajectory at the student's ``K``
noise levels and its clean end point. For every chunk of the student a step ``k`` is drawn; the
chunk's frames are taken from the trajectory at step ``k`` and carry timestep ``timesteps[k]``, so
one full-sequence block-causal forward trains every step at once on mixed-noise contexts. The loss
is the MSE between the student's clean estimate ``x - sigma * flow`` and the teacher's clean latent.
This turns the bidirectional teacher's weights into a causal few-step generator (CausVid's
initialisation, which Self-Forcing and Self-Forcing++ keep).

Orchestration only: the generator, text encoder, codec and schedule are components from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sfpp.diffusion.rollout import FewStepSampler, rollout_from_seed
from sfpp.diffusion.schedule import sigma_from_timestep, x0_from_flow
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.stages.base import SupervisedStage
from sfpp.stages.components import freeze, move_plain_components

__all__ = ["ODEInitModule", "chunkwise_states"]


def chunkwise_states(
    noisy: torch.Tensor, step_index: torch.Tensor, timesteps: torch.Tensor, num_frames_per_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assemble the student's input: each chunk's frames from the trajectory at that chunk's step.

    Args:
        noisy: Trajectory states ``(B, K, C, F, H, W)`` at the student's ``K`` steps.
        step_index: Step drawn per chunk, ``(B, F // num_frames_per_chunk)`` integers in ``[0, K)``.
        timesteps: The student's ``K`` timesteps ``(K,)`` on the 0..1000 scale.
        num_frames_per_chunk: Latent frames per chunk.

    Returns:
        ``x (B, C, F, H, W)`` and per-frame timesteps ``(B, F)``.

    Raises:
        ValueError: If the frames do not split into whole chunks or the shapes disagree.
    """
    batch, num_steps, channels, num_frames, height, width = noisy.shape
    if num_frames % num_frames_per_chunk:
        raise ValueError(
            f"the pairs have {num_frames} latent frames, not a multiple of the student's "
            f"num_frames_per_chunk={num_frames_per_chunk}; change model.num_frames_per_chunk"
        )
    if step_index.shape != (batch, num_frames // num_frames_per_chunk) or timesteps.shape != (num_steps,):
        raise ValueError(
            f"step_index {tuple(step_index.shape)} and timesteps {tuple(timesteps.shape)} do not fit "
            f"noisy {tuple(noisy.shape)} with chunks of {num_frames_per_chunk} frames"
        )
    frame_step = step_index.repeat_interleave(num_frames_per_chunk, dim=1)  # (B, F)
    gather_index = frame_step[:, None, None, :, None, None].expand(
        batch, 1, channels, num_frames, height, width
    )
    x = noisy.gather(1, gather_index).squeeze(1)  # (B, C, F, H, W)
    return x, timesteps.to(noisy.device)[frame_step]  # (B, C, F, H, W), (B, F)


class ODEInitModule(SupervisedStage):
    """ODE regression of a block-causal few-step student, with an EMA copy for sampling.

    Args:
        generator: Block-causal :class:`CausalWanDiT` (``causal=True``), initialised from the
            teacher's weights by the config.
        text_encoder: Frozen prompt encoder ``prompts -> (embeddings (B, L, D), mask (B, L))``.
        sampler: The student's few-step schedule; the pairs must be stored at its ``sigmas``.
        optimizer: Partial optimiser, built after sharding on the trainable parameters.
        lr_scheduler: Optional partial LR scheduler (stepped every optimisation step).
        codec: Latents -> pixels for :meth:`sample_videos` (``None``: no samples).
        ema_decay: Decay of the EMA copy used for sampling.
        ema_start_step: Steps before the EMA starts averaging.
        cache_window_frames: Past latent frames the rolling KV cache keeps when sampling (the
            teacher horizon by default in the experiments).
        sample_seed: Default seed of :meth:`sample_videos`.
        seed: Base seed of the per-step draws of the denoising steps, per ``(seed, step)`` so that a
            resumed run continues exactly.
    """

    def __init__(
        self,
        generator: CausalWanDiT,
        text_encoder: Any,
        sampler: FewStepSampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        codec: Any | None = None,
        ema_decay: float = 0.99,
        ema_start_step: int = 200,
        cache_window_frames: int = 21,
        sample_seed: int = 1234,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, seed)
        if not generator.config.causal:
            raise ValueError("the ODE-init student is block-causal: build its model with causal=true")
        if cache_window_frames < generator.config.num_frames_per_chunk:
            raise ValueError(
                f"stage.cache_window_frames={cache_window_frames} is smaller than a chunk "
                f"({generator.config.num_frames_per_chunk} frames); raise it (e.g. to the teacher horizon)"
            )
        self.save_hyperparameters(
            ignore=["generator", "text_encoder", "codec", "sampler", "optimizer", "lr_scheduler"]
        )
        self.generator = generator
        self.text_encoder = freeze(text_encoder)
        self.codec = codec
        self.sampler = sampler
        self.ema = self.make_ema(ema_decay, ema_start_step)
        self.cache_window_frames = cache_window_frames
        self.register_buffer(
            "timesteps", torch.tensor(list(sampler.timesteps), dtype=torch.float32), persistent=False
        )

    @property
    def trained_model(self) -> nn.Module:
        """The block-causal student."""
        return self.generator

    def on_fit_start(self) -> None:
        """Move plain-object components (umT5, the Wan VAE) to the device; check the pairs' noise levels.

        Raises:
            ValueError: If the datamodule's pairs were stored at other noise levels than the
                student's schedule.
        """
        move_plain_components(self.device, self.text_encoder, self.codec)
        stored = getattr(self.trainer.datamodule, "student_sigmas", None)
        if stored is None:
            return
        expected = self.sampler.sigmas
        if len(stored) != len(expected) or any(
            abs(a - b) > 1e-5 for a, b in zip(stored, expected, strict=False)
        ):
            raise ValueError(
                f"the ODE pairs hold states at sigmas {stored} but stage.sampler steps at {expected}; "
                "make stage.sampler match the generator.student_sampler the pairs were made with"
            )

    # -- training ------------------------------------------------------------------------------

    def ode_loss(self, batch: dict[str, Any], step_index: torch.Tensor) -> torch.Tensor:
        """MSE between the student's clean estimate and the teacher's clean latent.

        Args:
            batch: ``{"noisy": (B, K, C, F, H, W), "clean": (B, C, F, H, W), "prompt": list[str]}``.
            step_index: Step per chunk ``(B, F // num_frames_per_chunk)``.
        """
        noisy, clean = batch["noisy"], batch["clean"]
        if noisy.shape[1] != len(self.timesteps):
            raise ValueError(
                f"the pairs hold {noisy.shape[1]} states per trajectory but stage.sampler has "
                f"{len(self.timesteps)} steps; regenerate the pairs or fix stage.sampler"
            )
        x, timestep = chunkwise_states(
            noisy, step_index, self.timesteps, self.generator.config.num_frames_per_chunk
        )
        context = self.encode_prompts(batch["prompt"])
        flow = self.generator(x, timestep, context)
        sigma = sigma_from_timestep(timestep, self.sampler.num_train_timesteps)  # (B, F)
        return F.mse_loss(x0_from_flow(flow, x, sigma).float(), clean.float())

    def _num_chunks(self, batch: dict[str, Any]) -> int:
        return batch["noisy"].shape[3] // self.generator.config.num_frames_per_chunk

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One ODE-regression step with an independent step draw per sample and chunk."""
        batch_size = batch["noisy"].shape[0]
        shape = (batch_size, self._num_chunks(batch))
        step_index = self.step_draws(batch_idx, batch_size).randint(
            0, len(self.timesteps), shape[1]
        )  # (B, chunks)
        loss = self.ode_loss(batch, step_index)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss of every step on held-out pairs (all chunks at the same step), and their mean."""
        batch_size = batch["noisy"].shape[0]
        losses = []
        for k in range(len(self.timesteps)):
            step_index = torch.full((batch_size, self._num_chunks(batch)), k, device=self.device)
            losses.append(self.ode_loss(batch, step_index))
            self.log(f"val/loss_step{k}", losses[-1], batch_size=batch_size)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=batch_size)

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_videos(
        self, prompts: list[str], num_frames: int, frame_size: tuple[int, int], seed: int | None = None
    ) -> torch.Tensor:
        """Stream a rollout of the EMA student through a rolling KV cache and decode it.

        Args:
            prompts: One prompt per video.
            num_frames: Latent frames per video (a multiple of the chunk size; may exceed the horizon).
            frame_size: ``(height, width)`` of the decoded frames.
            seed: Noise seed (default: ``sample_seed``); the same seed gives the same videos.

        Returns:
            Decoded videos ``(B, 3, F', H, W)`` in ``[-1, 1]``.
        """
        if self.codec is None:
            raise ValueError("sample_videos decodes latents: give the stage a codec (stage.codec)")
        height, width = frame_size
        stride = self.codec.spatial_stride
        latent_shape = (self.codec.latent_channels, height // stride, width // stride)
        context = self.encode_prompts(prompts)
        latents = rollout_from_seed(
            self.ema.module,
            context,
            num_frames,
            latent_shape,
            self.sampler,
            seed=self.hparams.sample_seed if seed is None else seed,
            window_frames=self.cache_window_frames,
        )
        return self.codec.decode(latents).clamp(-1, 1)
