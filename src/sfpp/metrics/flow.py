"""Dense optical flow between consecutive frames, with OpenCV (no weights to download).

Shared by the continuity reward (:mod:`sfpp.rewards`) and the stability metrics: both look at how
the flow magnitude evolves along a video. Frames of the built-in world are tiny (16 x 16), far
below the scales DIS and Farneback are tuned for, so frames are upsampled (``upscale``, nearest
neighbour keeps the world's crisp edges) before the flow is computed and the flow is divided back
to the frame's own pixel units.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["dense_flow", "flow_magnitudes", "to_gray_uint8"]

_METHODS = ("dis", "farneback")


def to_gray_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """One RGB video ``(3, F, H, W)`` in ``[-1, 1]`` as grey ``uint8`` frames ``(F, H, W)``.

    Raises:
        ValueError: If the video is not ``(3, F, H, W)``.
    """
    array = (
        video.detach().float().cpu().numpy()
        if isinstance(video, torch.Tensor)
        else np.asarray(video, np.float32)
    )
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"expected one RGB video (3, F, H, W) in [-1, 1], got shape {array.shape}")
    rgb = (np.clip(array, -1.0, 1.0) + 1.0) * 127.5  # (3, F, H, W) in [0, 255]
    gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # (F, H, W)
    return np.round(gray).astype(np.uint8)


def dense_flow(video: torch.Tensor | np.ndarray, method: str = "dis", upscale: int = 4) -> np.ndarray:
    """Dense flow from every frame to the next.

    Args:
        video: One RGB video ``(3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``.
        method: ``"dis"`` (OpenCV's DIS, medium preset) or ``"farneback"``.
        upscale: Integer factor the frames are enlarged by (nearest neighbour) before the flow is
            computed; the returned flow is in the original frame's pixels.

    Returns:
        Float32 flow ``(F - 1, H, W, 2)`` as ``(dx, dy)`` per pixel of the earlier frame.

    Raises:
        ValueError: For an unknown method, ``upscale < 1`` or fewer than two frames.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {_METHODS}")
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    frames = to_gray_uint8(video)  # (F, H, W)
    num_frames, height, width = frames.shape
    if num_frames < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {num_frames}")
    if upscale > 1:
        frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)  # (F, H*u, W*u)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = np.empty((num_frames - 1, height, width, 2), dtype=np.float32)
    for index in range(num_frames - 1):
        prev, nxt = frames[index], frames[index + 1]
        if method == "dis":
            flow = dis.calc(prev, nxt, None)
        else:
            flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if upscale > 1:
            # (H*u, W*u, 2) -> (H, W, 2): average each u x u block, back to the frame's pixel units
            flow = flow.reshape(height, upscale, width, upscale, 2).mean(axis=(1, 3)) / upscale
        flows[index] = flow
    return flows


def flow_magnitudes(flow: np.ndarray) -> np.ndarray:
    """Mean flow magnitude (pixels per frame) of each frame pair of ``flow`` ``(P, H, W, 2)``: ``(P,)``."""
    return np.linalg.norm(flow, axis=-1).mean(axis=(1, 2))
