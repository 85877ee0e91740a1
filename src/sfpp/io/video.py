"""Videos to files: mp4 (streamed frame by frame) and PNG frame grids.

Tiny frames (the built-in world's 16x16) are upscaled with nearest-neighbour so they can be seen.
"""

from __future__ import annotations

import os
from pathlib import Path

# imageio-ffmpeg starts ffmpeg with ``preexec_fn=os.setpgrp`` (to keep Ctrl+C away from it), and a
# ``preexec_fn`` runs Python in the forked child: in a threaded process (the streaming server
# writes from a worker thread) the child can deadlock before it execs ffmpeg, hanging the writer.
# Without it ffmpeg shares the terminal's Ctrl+C, which ends the run anyway.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

import imageio.v2 as imageio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from einops import rearrange

__all__ = ["StreamingVideoWriter", "to_uint8_frames", "write_frame_grid", "write_gif", "write_video"]


def to_uint8_frames(video: torch.Tensor, upscale: int = 1) -> np.ndarray:
    """Convert one video ``(3, F, H, W)`` in ``[-1, 1]`` to ``(F, H * upscale, W * upscale, 3)`` uint8.

    Raises:
        ValueError: If the video is not ``(3, F, H, W)`` or ``upscale < 1``.
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video (3, F, H, W), got {tuple(video.shape)}")
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = rearrange(frames, "c f h w -> f h w c").cpu().numpy()
    if upscale > 1:
        frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)  # (F, H*u, W*u, 3)
    return frames


class StreamingVideoWriter:
    """Write an mp4 frame by frame, so long videos never sit in memory; a context manager.

    The file is finalised on ``close()`` (also on an exception inside the ``with`` block), so an
    interrupted generation leaves a playable video of what was written.

    Args:
        path: Output ``.mp4`` path (parent directories are created).
        fps: Frames per second.
        upscale: Nearest-neighbour upscaling factor.
    """

    def __init__(self, path: str | Path, fps: int = 8, upscale: int = 1) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.upscale = upscale
        self.num_frames = 0
        self._writer = imageio.get_writer(
            self.path, fps=fps, codec="libx264", quality=8, macro_block_size=1, pixelformat="yuv420p"
        )

    def write(self, video: torch.Tensor) -> None:
        """Append the frames of ``(3, F, H, W)`` in ``[-1, 1]``."""
        for frame in to_uint8_frames(video, self.upscale):
            self._writer.append_data(frame)
            self.num_frames += 1

    def close(self) -> None:
        """Finalise the file."""
        self._writer.close()

    def __enter__(self) -> StreamingVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: str | Path, video: torch.Tensor, fps: int = 8, upscale: int = 1) -> Path:
    """Write one video ``(3, F, H, W)`` in ``[-1, 1]`` to an mp4; returns the path."""
    with StreamingVideoWriter(path, fps=fps, upscale=upscale) as writer:
        writer.write(video)
    return writer.path


def write_gif(path: str | Path, video: torch.Tensor, fps: int = 8, upscale: int = 1) -> Path:
    """Write one video ``(3, F, H, W)`` in ``[-1, 1]`` as an endlessly looping animated GIF.

    Args:
        path: Output ``.gif`` (parent folders are created).
        video: The frames.
        fps: Frames per second.
        upscale: Integer nearest-neighbour enlargement (small videos stay crisp).

    Returns:
        The path written.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(frame) for frame in to_uint8_frames(video, upscale)]  # (F, H', W', 3) each
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, optimize=True
    )
    return path


def write_frame_grid(path: str | Path, videos: torch.Tensor, upscale: int = 4, gap: int = 1) -> Path:
    """Write a PNG grid: one row per video, one column per frame.

    Args:
        path: Output ``.png`` path.
        videos: ``(B, 3, F, H, W)`` in ``[-1, 1]``.
        upscale: Nearest-neighbour upscaling factor.
        gap: White pixels between cells.
    """
    rows = [to_uint8_frames(v, upscale) for v in videos]  # each (F, H, W, 3)
    num_frames, height, width, _ = rows[0].shape
    grid = np.full(
        (len(rows) * (height + gap) - gap, num_frames * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    for r, frames in enumerate(rows):
        for f, frame in enumerate(frames):
            y, x = r * (height + gap), f * (width + gap)
            grid[y : y + height, x : x + width] = frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, grid)
    return path
