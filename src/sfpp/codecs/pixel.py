"""The pixel codec: pixels are the latents, optionally folded into channels (space-to-depth).

Used by the built-in world (16x16 RGB frames), where no VAE is needed. With ``space_to_depth=s``
each ``s x s`` block of pixels becomes ``3 * s * s`` channels of one latent position, an exact,
invertible reshape; the temporal stride is 1.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from sfpp.codecs.base import StreamDecoder, VideoCodec

__all__ = ["PixelCodec", "PixelStreamDecoder"]


class PixelCodec(VideoCodec):
    """Identity or space-to-depth codec.

    Latent channel ``c * s * s + i * s + j`` holds colour channel ``c`` of the pixel at offset
    ``(i, j)`` inside each ``s x s`` block.

    Args:
        space_to_depth: Block size ``s`` folded into channels (1: identity).
        clamp: Clamp decoded videos to ``[-1, 1]`` (as a VAE decoder does); encoding never clamps,
            so ``decode(encode(video)) == video`` exactly for videos in ``[-1, 1]``.
    """

    def __init__(self, space_to_depth: int = 1, clamp: bool = True) -> None:
        if not isinstance(space_to_depth, int) or space_to_depth < 1:
            raise ValueError(f"codec.space_to_depth must be a positive integer, got {space_to_depth!r}.")
        self.space_to_depth = space_to_depth
        self.clamp = clamp

    @property
    def latent_channels(self) -> int:
        """``3 * space_to_depth ** 2``."""
        return 3 * self.space_to_depth**2

    @property
    def spatial_stride(self) -> int:
        """``space_to_depth``."""
        return self.space_to_depth

    @property
    def temporal_stride(self) -> int:
        """Always 1: every frame is a latent frame."""
        return 1

    def encode(self, video: Tensor) -> Tensor:
        """Fold ``s x s`` pixel blocks into channels: ``(B, 3, F, H, W) -> (B, 3 s^2, F, H / s, W / s)``."""
        self._check_video(video)
        s = self.space_to_depth
        if s == 1:
            return video
        return rearrange(video, "b c f (h si) (w sj) -> b (c si sj) f h w", si=s, sj=s)

    def decode(self, latents: Tensor) -> Tensor:
        """Unfold channels back into pixel blocks: ``(B, 3 s^2, F, h, w) -> (B, 3, F, h s, w s)``."""
        self._check_latents(latents)
        s = self.space_to_depth
        video = latents
        if s > 1:
            video = rearrange(latents, "b (c si sj) f h w -> b c f (h si) (w sj)", c=3, si=s, sj=s)
        return video.clamp(-1.0, 1.0) if self.clamp else video

    def stream_decoder(self) -> PixelStreamDecoder:
        """A stream decoder; stateless apart from its frame counter, as every frame decodes alone."""
        return PixelStreamDecoder(self)

    def to(self, device: torch.device | str) -> PixelCodec:
        """Nothing to move: the codec has no weights. Returns ``self``."""
        return self

    def __repr__(self) -> str:
        return f"PixelCodec(space_to_depth={self.space_to_depth}, clamp={self.clamp})"


class PixelStreamDecoder(StreamDecoder):
    """Chunk-wise decoding for :class:`PixelCodec` (each chunk decodes independently).

    Args:
        codec: The codec whose :meth:`PixelCodec.decode` is applied to each chunk.
    """

    def __init__(self, codec: PixelCodec) -> None:
        self.codec = codec
        self._num_latent_frames = 0

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Decode the next ``(B, C, f, h, w)`` chunk to ``(B, 3, f, H, W)`` frames."""
        frames = self.codec.decode(latents)
        self._num_latent_frames += latents.shape[2]
        return frames

    def reset(self) -> None:
        """Restart the frame counter."""
        self._num_latent_frames = 0

    @property
    def num_latent_frames_decoded(self) -> int:
        """Latent frames decoded since construction or the last :meth:`reset`."""
        return self._num_latent_frames
