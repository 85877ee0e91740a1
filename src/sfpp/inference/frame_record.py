"""A bounded copy of a streamed video's frames, for the metrics computed once it is finished.

The video itself goes to disk chunk by chunk; metrics (object scores, optical flow, stability) need
frames, but a long video of a large codec does not fit in memory (100 s of Wan2.1 at 480x832 is
1601 frames, 7.7 GB in float32). The record keeps, in a buffer allocated once for the whole video:

* every ``stride``-th frame, with ``stride = ceil(num_frames / max_frames)``: every frame while the
  video is at most ``max_frames`` long (the built-in world's videos always are at the defaults), so
  motion metrics stay per frame; beyond that, evenly spaced frames and the stride is reported;
* frames whose longer side exceeds ``max_side`` area-downsampled to it (the world's 16x16 frames
  are kept as they are);
* as ``uint8``, exactly the values the video writer receives.

Memory is ``max_frames * 3 * h * w`` bytes at most (2048 frames of 128x72: 57 MB), whatever the length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["FrameRecord"]


class FrameRecord:
    """Keeps at most ``max_frames`` frames of a video of known length, downsampled and as ``uint8``.

    Args:
        num_frames: Frames the whole video will have.
        max_frames: Frames kept at most (0: keep none, metrics off).
        max_side: Longest side of a kept frame in pixels (``None``: full size).

    Raises:
        ValueError: For a negative ``max_frames``, ``num_frames < 1`` or ``max_side < 1``.
    """

    def __init__(self, num_frames: int, max_frames: int, max_side: int | None = None) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if max_frames < 0:
            raise ValueError(f"max_metric_frames must be >= 0 (0 turns metrics off), got {max_frames}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"metric_max_side must be >= 1 or null, got {max_side}")
        self.num_frames = num_frames
        self.max_side = max_side
        self.stride = math.ceil(num_frames / max_frames) if max_frames else 0
        self.capacity = math.ceil(num_frames / self.stride) if max_frames else 0
        self.num_seen = 0
        self.num_kept = 0
        self._frames: torch.Tensor | None = None  # (capacity, 3, h, w) uint8, allocated on the first add

    @property
    def enabled(self) -> bool:
        """Whether any frame is kept."""
        return self.capacity > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer (fixed once the first frames have arrived)."""
        return 0 if self._frames is None else self._frames.numel() * self._frames.element_size()

    def _size(self, height: int, width: int) -> tuple[int, int]:
        """Kept frame size for ``height x width`` frames."""
        if self.max_side is None or max(height, width) <= self.max_side:
            return height, width
        scale = self.max_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def add(self, frames: torch.Tensor) -> None:
        """Record the next frames of the video.

        Args:
            frames: ``(3, f, H, W)`` in ``[-1, 1]``, following the frames added before.

        Raises:
            ValueError: If more frames arrive than ``num_frames`` or the shape is not ``(3, f, H, W)``.
        """
        if frames.ndim != 4 or frames.shape[0] != 3:
            raise ValueError(f"expected frames (3, f, H, W), got {tuple(frames.shape)}")
        count = frames.shape[1]
        if self.num_seen + count > self.num_frames:
            raise ValueError(f"the record was made for {self.num_frames} frames, got {self.num_seen + count}")
        if not self.enabled:
            self.num_seen += count
            return
        first = -self.num_seen % self.stride  # offset in this batch of the first frame to keep
        kept = rearrange(frames[:, first :: self.stride], "c k h w -> k c h w").float()
        self.num_seen += count
        if kept.shape[0] == 0:
            return
        size = self._size(*kept.shape[2:])
        if size != tuple(kept.shape[2:]):
            kept = F.interpolate(kept, size=size, mode="area")  # (k, 3, h, w)
        if self._frames is None:
            self._frames = torch.zeros((self.capacity, 3, *size), dtype=torch.uint8)
        quantised = ((kept.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # (k, 3, h, w)
        self._frames[self.num_kept : self.num_kept + kept.shape[0]] = quantised
        self.num_kept += kept.shape[0]

    def video(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The kept frames whose source index lies in ``[start, end)``, as one video in ``[-1, 1]``.

        Args:
            start: First source frame.
            end: One past the last source frame (default: every frame seen).

        Returns:
            Float32 ``(3, n, h, w)``; ``n`` may be 0.
        """
        if self._frames is None:
            return torch.zeros(3, 0, 0, 0)
        end = self.num_seen if end is None else min(end, self.num_seen)
        first = math.ceil(start / self.stride)  # kept index of the first source frame >= start
        last = math.ceil(end / self.stride)  # kept index of the first source frame >= end
        frames = self._frames[first : min(last, self.num_kept)]  # (n, 3, h, w)
        return rearrange(frames.float().div(127.5).sub(1.0), "n c h w -> c n h w")
