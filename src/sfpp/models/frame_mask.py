"""Which frames a frame may attend to: bidirectional, block-causal, sliding window with sinks.

One rule serves both attention paths, so they cannot drift apart:

* the full-sequence forward turns it into a token mask (dense for SDPA, a block mask for flex);
* the rolling KV cache (:mod:`sfpp.models.kv_cache`) keeps exactly the frames it makes visible.

Frames are grouped into chunks of ``num_frames_per_chunk`` starting at frame 0. A query frame in
the chunk that starts at frame ``s`` sees every frame of its own chunk, plus past frames ``k < s``
with ``k < sink_frames`` (the sinks) or ``k >= s - window_frames`` (the recent window).
``window_frames`` counts past frames only: the current chunk is always visible on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FrameAttentionPattern"]


@dataclass(frozen=True)
class FrameAttentionPattern:
    """Frame-level attention visibility.

    Args:
        num_frames_per_chunk: Chunk length in latent frames, or ``None`` for bidirectional
            attention (every frame sees every frame).
        window_frames: Past frames visible besides the sinks, or ``None`` for the whole past.
        sink_frames: Frames from the start of the video that stay visible forever.
    """

    num_frames_per_chunk: int | None = None
    window_frames: int | None = None
    sink_frames: int = 0

    def __post_init__(self) -> None:
        if self.num_frames_per_chunk is None:
            if self.window_frames is not None or self.sink_frames:
                raise ValueError(
                    "window_frames and sink_frames need a block-causal pattern (num_frames_per_chunk)"
                )
            return
        if self.num_frames_per_chunk < 1:
            raise ValueError(f"num_frames_per_chunk must be >= 1, got {self.num_frames_per_chunk}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")
        if self.window_frames is not None and self.window_frames < self.num_frames_per_chunk:
            raise ValueError(
                f"window_frames={self.window_frames} is smaller than a chunk "
                f"(num_frames_per_chunk={self.num_frames_per_chunk}); raise window_frames"
            )

    @property
    def is_causal(self) -> bool:
        """Whether the pattern is block-causal."""
        return self.num_frames_per_chunk is not None

    def chunk_start(self, frame: torch.Tensor) -> torch.Tensor:
        """First frame of the chunk that holds each frame index."""
        if self.num_frames_per_chunk is None:
            return torch.zeros_like(frame)
        return frame - frame % self.num_frames_per_chunk

    def visible(self, query_frame: torch.Tensor, key_frame: torch.Tensor) -> torch.Tensor:
        """Elementwise visibility of key frames from query frames (broadcasting integer tensors)."""
        if self.num_frames_per_chunk is None:
            return torch.ones(torch.broadcast_shapes(query_frame.shape, key_frame.shape), dtype=torch.bool)
        start = self.chunk_start(query_frame)
        same_chunk = (key_frame >= start) & (key_frame < start + self.num_frames_per_chunk)
        past = key_frame < start
        if self.window_frames is not None:
            past = past & ((key_frame < self.sink_frames) | (key_frame >= start - self.window_frames))
        return same_chunk | past

    def frame_mask(self, num_frames: int) -> torch.Tensor:
        """Boolean ``(num_frames, num_frames)`` mask, ``[q, k]`` true where q may attend to k."""
        frames = torch.arange(num_frames)
        return self.visible(frames[:, None], frames[None, :])

    def token_mask(
        self, num_frames: int, tokens_per_frame: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Boolean ``(L, L)`` token mask with ``L = num_frames * tokens_per_frame`` (frame-major tokens)."""
        mask = self.frame_mask(num_frames).to(device)
        mask = mask.repeat_interleave(tokens_per_frame, dim=0)  # (L, F)
        return mask.repeat_interleave(tokens_per_frame, dim=1)  # (L, L)
