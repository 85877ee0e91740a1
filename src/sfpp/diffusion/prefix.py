"""Given first frames: training a student (and a teacher) to continue a clip or animate an image.

At inference a student can start from frames the user gives (``init_image`` / ``init_video``):
they are encoded and written into the rolling cache as finished chunks, and generation continues
from the next frame. A student trained from noise alone has never seen real frames in its cache;
:class:`PrefixTraining` lets the DMD stage start some of its training rollouts from the first
frames of a real clip instead:

* per optimisation step, with probability ``probability``, ``k`` pixel frames (drawn from
  ``pixel_frames``) of the batch's real clips are given; they are completed to whole chunks by
  holding the last one (as at inference, :func:`hold_to_chunks`), encoded with the codec and
  written into the cache (:func:`~sfpp.diffusion.rollout.write_prefix`);
* the supervised window then ends ``window - given`` generated frames after the prefix and holds its
  last ``given`` frames (:func:`given_in_window`), which the teacher and the critic see clean, at
  timestep 0 (:func:`keep_given_clean`), while the DMD and critic losses skip them. The teacher
  thus judges the continuation together with the frames it continues.

The draw comes from its own stream of ``(seed, step)``: turning the setting on or off changes no
other random draw of the step. The teacher learns to take clean first frames with the teacher
stage's ``clean_prefix_probability`` (its per-frame timesteps allow it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import repeat

from sfpp.utils.seeding import PREFIX_STREAM, step_generator

__all__ = [
    "PREFIX_STREAM",
    "PrefixTraining",
    "given_in_window",
    "hold_given_frames",
    "hold_to_chunks",
    "keep_given_clean",
]


@dataclass(frozen=True)
class PrefixTraining:
    """When and how many real frames a training rollout starts from.

    Args:
        probability: Chance, per optimisation step, that the step's rollouts start from real frames
            (0: never, the default everywhere).
        pixel_frames: The numbers of given pixel frames, one drawn uniformly per prefixed step
            (``[1]``: an image; ``[1, 8]``: an image or one teacher horizon of the built-in world).
        in_first_chunk: Condition the first chunk on the given frames, held clean at timestep 0 inside
            it (Wan2.2-TI2V's image conditioning; they must encode to fewer latent frames than a
            chunk), instead of writing them into the cache as chunks of their own.
    """

    probability: float = 0.0
    pixel_frames: tuple[int, ...] = (1,)
    in_first_chunk: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"prefix.probability must lie in [0, 1], got {self.probability}")
        frames = tuple(int(f) for f in self.pixel_frames)
        if not frames or any(f < 1 for f in frames):
            raise ValueError(
                f"prefix.pixel_frames must be a non-empty list of counts >= 1, got {self.pixel_frames}"
            )
        object.__setattr__(self, "pixel_frames", frames)

    @classmethod
    def parse(cls, value: PrefixTraining | Mapping[str, Any] | None) -> PrefixTraining | None:
        """The settings from a config mapping (``None`` or probability 0: off)."""
        if value is None:
            return None
        settings = value if isinstance(value, PrefixTraining) else cls(**dict(value))
        return settings if settings.probability > 0 else None

    @property
    def max_pixel_frames(self) -> int:
        """The longest prefix: the batches' clips must hold at least this many frames."""
        return max(self.pixel_frames)

    def draw(self, seed: int, step: int) -> int:
        """Pixel frames given at optimisation step ``step`` (0: the step starts from noise)."""
        rng = step_generator(seed, PREFIX_STREAM, step)
        if torch.rand((), generator=rng).item() >= self.probability:
            return 0
        return self.pixel_frames[int(torch.randint(len(self.pixel_frames), (), generator=rng))]

    def as_dict(self) -> dict[str, Any]:
        """Plain settings, for the checkpoint's hyperparameters."""
        return {
            "probability": self.probability,
            "pixel_frames": list(self.pixel_frames),
            "in_first_chunk": self.in_first_chunk,
        }


def hold_to_chunks(frames: torch.Tensor, temporal_stride: int, chunk_frames: int) -> tuple[torch.Tensor, int]:
    """Complete given frames to whole chunks of latent frames by holding the last one.

    A codec turns ``1 + stride * (n - 1)`` frames into ``n`` latent frames (stride 1 for the pixel
    codec, 4 for the Wan VAE, whose first latent frame encodes one frame); the cache takes chunks
    of ``chunk_frames`` latent frames.

    Args:
        frames: Given frames ``(B, 3, F, H, W)``.
        temporal_stride: The codec's temporal stride.
        chunk_frames: Latent frames per chunk.

    Returns:
        ``(frames, held)``: the frames ``(B, 3, F + held, H, W)`` that encode to
        ``ceil(latent frames / chunk) * chunk`` latent frames, and how many copies were added.
    """
    given = int(frames.shape[2])
    needed = 1 + math.ceil((given - 1) / temporal_stride)  # latent frames that cover the given frames
    latent_frames = math.ceil(needed / chunk_frames) * chunk_frames
    held = 1 + temporal_stride * (latent_frames - 1) - given
    if held:
        last = repeat(frames[:, :, -1], "b c h w -> b c n h w", n=held)
        frames = torch.cat([frames, last], dim=2)
    return frames, held


def given_in_window(prefix_frames: int, window_frames: int, chunk_frames: int) -> int:
    """Latent frames of the prefix that the supervised window holds (its first ones).

    The window ends ``window - given`` generated frames after the prefix: it holds the whole prefix
    when that leaves at least one generated chunk, else the prefix's last ``window - chunk`` frames.
    """
    return min(prefix_frames, window_frames - chunk_frames)


def hold_given_frames(
    given: torch.Tensor, x_t: torch.Tensor, timestep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy state whose first frames are the clean ``given`` ones, at timestep 0.

    Args:
        given: Clean latents of the first ``k`` frames ``(B, C, k, h, w)``.
        x_t: The noisy state ``(B, C, F, h, w)``.
        timestep: Its timesteps ``(B,)``.

    Returns:
        ``(x_t, timestep (B, F))``: the state with the given frames in front and per-frame timesteps,
        0 on them.
    """
    given_frames = given.shape[2]
    x_t = torch.cat([given.detach().to(x_t.dtype), x_t[:, :, given_frames:]], dim=2)  # (B, C, F, h, w)
    per_frame_t = repeat(timestep, "b -> b f", f=x_t.shape[2]).clone()
    per_frame_t[:, :given_frames] = 0.0
    return x_t, per_frame_t


def keep_given_clean(
    window: torch.Tensor, x_t: torch.Tensor, timestep: torch.Tensor, sigma: torch.Tensor, given: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The re-noised window with its first ``given`` frames clean, at timestep 0.

    Args:
        window: The clean window ``(B, C, K, h, w)``.
        x_t: Its re-noised copy, same shape.
        timestep: The re-noising timesteps ``(B,)``.
        sigma: The matching noise levels ``(B,)``.
        given: Frames at the start of the window that are given.

    Returns:
        ``(x_t, timestep (B, K), sigma (B, K), loss_mask (1, 1, K, 1, 1))``: the per-frame
        timesteps and noise levels (0 on the given frames) and a mask that is false on them.
    """
    frames = window.shape[2]
    x_t, per_frame_t = hold_given_frames(window[:, :, :given], x_t, timestep)
    mask = torch.ones(1, 1, frames, 1, 1, dtype=torch.bool, device=window.device)  # (1, 1, K, 1, 1)
    mask[:, :, :given] = False
    per_frame_sigma = (
        repeat(torch.as_tensor(sigma, device=timestep.device), "b -> b k", k=frames) * mask[0, 0, :, 0, 0]
    )
    return x_t, per_frame_t, per_frame_sigma, mask
