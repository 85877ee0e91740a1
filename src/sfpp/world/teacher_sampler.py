"""The toy teacher's own clips: its EMA weights, text encoder and sampler, as the ODE pairs use them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sfpp.codecs import PixelCodec
from sfpp.diffusion.sampling import EulerSampler, guided_flow
from sfpp.diffusion.schedule import timestep_from_sigma, x0_from_flow

__all__ = ["TeacherClipSampler"]


class TeacherClipSampler:
    """Samples clips of one horizon from a bidirectional teacher with classifier-free guidance.

    Args:
        teacher: The bidirectional model (``causal=False``).
        text_encoder: Maps ``list[str]`` to ``(embeddings (B, L, D), mask (B, L))``.
        sampler: The Euler sampler (steps, shift, CFG scale).
        latent_shape: ``(C, h, w)`` of one latent frame.
        num_frames: Latent frames per clip (the teacher's horizon).
        negative_prompt: The CFG null condition.
    """

    def __init__(
        self,
        teacher: nn.Module,
        text_encoder: nn.Module,
        sampler: EulerSampler,
        latent_shape: Sequence[int],
        num_frames: int,
        negative_prompt: str = "",
    ) -> None:
        self.teacher = teacher.eval()
        self.text_encoder = text_encoder.eval()
        self.sampler = sampler
        self.latent_shape = tuple(latent_shape)
        self.num_frames = num_frames
        self.negative_prompt = negative_prompt
        self.codec = PixelCodec()

    @classmethod
    def from_checkpoint(cls, teacher_ckpt: str | Path) -> TeacherClipSampler:
        """The toy teacher of a ``toy_teacher`` checkpoint with the settings that wrote its ODE pairs.

        The teacher, text encoder, sampler (32 Euler steps, CFG 2) and clip shape are those of
        ``conf/ode_pairs/world.yaml``, so the clips are exactly what the students distil.

        Raises:
            FileNotFoundError: If the checkpoint does not exist.
        """
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from sfpp.utils.config_dir import find_config_dir

        if not Path(teacher_ckpt).is_file():
            raise FileNotFoundError(
                f"teacher checkpoint {teacher_ckpt} not found; train one with "
                "`python -m sfpp.train experiment=toy_teacher` (or `make demo`)"
            )
        with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="teacher"):
            cfg = compose(config_name="ode_pairs", overrides=[f"teacher_ckpt={teacher_ckpt}"]).generator
        return cls(
            teacher=instantiate(cfg.teacher),
            text_encoder=instantiate(cfg.text_encoder),
            sampler=instantiate(cfg.sampler),
            latent_shape=cfg.latent_shape,
            num_frames=cfg.num_frames,
            negative_prompt=cfg.negative_prompt,
        )

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        """Clips ``(B, 3, K, H, W)`` in ``[-1, 1]`` for the prompts; the same seed gives the same noise.

        The noise depends on the seed and the number of prompts only.
        """
        context = self.text_encoder(list(prompts))[0]
        null_context = self.text_encoder([self.negative_prompt] * len(prompts))[0]
        channels, height, width = self.latent_shape
        shape = (len(prompts), channels, self.num_frames, height, width)  # (B, C, K, h, w)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        latents = self.sampler.sample(self.teacher, noise, context, null_context).x0
        return self.codec.decode(latents).clamp(-1, 1)

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The teacher's conditional clean estimate of noisy clips (no guidance).

        Args:
            x_t: Noisy clips ``(B, 3, K, H, W)`` (pixels are the latents of the built-in world).
            sigma: Per-sample noise levels ``(B,)`` in ``(0, 1]``.
            prompts: One prompt per clip.

        Returns:
            The ``x0`` estimate, ``x_t``'s shape.
        """
        latents = self.codec.encode(x_t)
        flow = self.teacher(latents, timestep_from_sigma(sigma), self.text_encoder(list(prompts))[0])
        return self.codec.decode(x0_from_flow(flow, latents, sigma))

    @torch.no_grad()
    def guided_denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The clean estimate the sampler steps with: :meth:`denoise` with the sampler's CFG scale.

        Args:
            x_t: Noisy clips ``(B, 3, K, H, W)``.
            sigma: Per-sample noise levels ``(B,)`` in ``(0, 1]``.
            prompts: One prompt per clip; the null condition is ``negative_prompt``.

        Returns:
            The guided ``x0`` estimate, ``x_t``'s shape.
        """
        latents = self.codec.encode(x_t)
        context = self.text_encoder(list(prompts))[0]
        null_context = self.text_encoder([self.negative_prompt] * len(prompts))[0]
        flow = guided_flow(
            self.teacher,
            latents,
            timestep_from_sigma(sigma),
            context,
            null_context,
            self.sampler.guidance_scale,
        )
        return self.codec.decode(x0_from_flow(flow, latents, sigma))
