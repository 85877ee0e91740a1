"""The codec interface: pixels <-> latents, whole videos or a latent stream chunk by chunk.

Every codec maps a video ``(B, 3, F, H, W)`` in ``[-1, 1]`` to latents ``(B, C, F', h, w)`` with
``h = H / spatial_stride`` and ``w = W / spatial_stride``. Temporally, codecs follow Wan's causal
layout: the first frame gets a latent frame of its own and every later latent frame covers
``temporal_stride`` frames, so ``F = 1 + temporal_stride * (F' - 1)`` (``F = F'`` for stride 1).

Long videos are decoded with a :class:`StreamDecoder`: the rollout hands it each new chunk of
latent frames and gets the matching frames back, with a state whose size does not depend on how
many chunks came before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["StreamDecoder", "VideoCodec", "resolve_dtype"]


def resolve_dtype(dtype: torch.dtype | str, setting: str) -> torch.dtype:
    """Turn a dtype or its name (``"bfloat16"``, ``"torch.float16"``; as written in a config) into a dtype.

    Args:
        dtype: A ``torch.dtype`` or the name of one.
        setting: The config setting the value came from, named in the error.

    Raises:
        ValueError: If the name is not a floating point torch dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(
            f"{setting}={dtype!r} is not a floating point torch dtype; use e.g. 'float32' or 'bfloat16'."
        )
    return resolved


class StreamDecoder(ABC):
    """Decodes a latent video chunk by chunk, in order, with a state of constant size.

    The frames of the first chunk after construction or :meth:`reset` start the video: a chunk of
    ``f`` latent frames gives ``1 + temporal_stride * (f - 1)`` frames, every later chunk
    ``temporal_stride * f`` frames. Concatenating the outputs along the frame axis gives the
    codec's full :meth:`VideoCodec.decode` of the concatenated latents.
    """

    @abstractmethod
    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Decode the next chunk of latent frames.

        Args:
            latents: ``(B, C, f, h, w)``, the latent frames that follow the previous chunk.

        Returns:
            The new frames, ``(B, 3, f', H, W)`` in ``[-1, 1]``.
        """

    @abstractmethod
    def reset(self) -> None:
        """Forget all previous chunks; the next chunk starts a new video."""

    @property
    @abstractmethod
    def num_latent_frames_decoded(self) -> int:
        """Latent frames decoded since construction or the last :meth:`reset`."""


class VideoCodec(ABC):
    """Maps videos in ``[-1, 1]`` to latents and back (see the module docstring for the layout)."""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels ``C`` of the latents."""

    @property
    @abstractmethod
    def spatial_stride(self) -> int:
        """Pixels per latent position along height and width."""

    @property
    @abstractmethod
    def temporal_stride(self) -> int:
        """Frames per latent frame (after the first latent frame, which holds one frame)."""

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """Encode a video.

        Args:
            video: ``(B, 3, F, H, W)`` in ``[-1, 1]`` with ``F = num_frames(F')`` for some ``F'`` and
                ``H``, ``W`` multiples of :attr:`spatial_stride`.

        Returns:
            Latents ``(B, C, F', H / spatial_stride, W / spatial_stride)``.
        """

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Decode latents to a video.

        Args:
            latents: ``(B, C, F', h, w)``.

        Returns:
            The video ``(B, 3, num_frames(F'), h * spatial_stride, w * spatial_stride)`` in ``[-1, 1]``.
        """

    @abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A new, independent :class:`StreamDecoder` for one latent video (or a batch of them)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> VideoCodec:
        """Move the codec's weights and buffers (if any) to ``device``; returns ``self``."""

    def num_frames(self, num_latent_frames: int) -> int:
        """Frames decoded from ``num_latent_frames`` latent frames: ``1 + temporal_stride * (n - 1)``.

        Raises:
            ValueError: If ``num_latent_frames < 1``.
        """
        if num_latent_frames < 1:
            raise ValueError(f"num_latent_frames must be at least 1, got {num_latent_frames}.")
        return 1 + self.temporal_stride * (num_latent_frames - 1)

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames``-frame video (the inverse of :meth:`num_frames`).

        Raises:
            ValueError: If ``num_frames`` is not ``1 + temporal_stride * k`` for some ``k >= 0``.
        """
        stride = self.temporal_stride
        if num_frames < 1 or (num_frames - 1) % stride != 0:
            below = 1 + stride * max(0, (num_frames - 1) // stride)
            raise ValueError(
                f"num_frames={num_frames} cannot be encoded by {type(self).__name__}: with temporal stride "
                f"{stride} a video needs 1 + {stride} * k frames (nearest: {below} or {below + stride})."
            )
        return 1 + (num_frames - 1) // stride

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Shape ``(C, F', h, w)`` of the latents of one ``(3, num_frames, height, width)`` video.

        Raises:
            ValueError: If the frame count or the frame size cannot be encoded.
        """
        self._check_frame_size(height, width)
        stride = self.spatial_stride
        return (self.latent_channels, self.num_latent_frames(num_frames), height // stride, width // stride)

    def _check_frame_size(self, height: int, width: int) -> None:
        stride = self.spatial_stride
        if height % stride != 0 or width % stride != 0:
            raise ValueError(
                f"frame size {height}x{width} is not a multiple of {type(self).__name__}'s spatial stride "
                f"{stride}; resize or crop the video to multiples of {stride}."
            )

    def _check_video(self, video: Tensor) -> None:
        """Validate a ``(B, 3, F, H, W)`` video against this codec's strides."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__}.encode expects a video (B, 3, F, H, W), got shape {tuple(video.shape)}."
            )
        self.num_latent_frames(video.shape[2])
        self._check_frame_size(video.shape[3], video.shape[4])

    def _check_latents(self, latents: Tensor) -> None:
        """Validate ``(B, C, F', h, w)`` latents against :attr:`latent_channels`."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels or latents.shape[2] < 1:
            raise ValueError(
                f"{type(self).__name__} expects latents (B, {self.latent_channels}, F', h, w) with F' >= 1, "
                f"got shape {tuple(latents.shape)}."
            )
