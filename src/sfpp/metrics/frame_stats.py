"""Per-frame statistics of videos, shared by the stability and quality metrics.

Videos are ``(B, 3, F, H, W)`` (or one ``(3, F, H, W)``) tensors in ``[-1, 1]``, or the same as
numpy arrays ``(..., F, H, W, 3)``; the statistics work on RGB in ``[0, 1]``, with luma
``Y = 0.299 R + 0.587 G + 0.114 B`` and chroma ``C = max(R, G, B) - min(R, G, B)``.
"""

from __future__ import annotations

import numpy as np
import torch

from sfpp.metrics.flow import dense_flow

__all__ = [
    "as_single_video",
    "as_video_batch",
    "contrast_video",
    "edge_strength",
    "hue_turns",
    "luma_chroma",
    "motion_magnitudes",
    "noise_level",
    "to_unit_rgb",
]

_LUMA_WEIGHTS = np.asarray([0.299, 0.587, 0.114])
_EDGE_TOP_FRACTION = 0.03
_NOISE_QUANTILE = 0.25
# |N(0, 1)| has its 25th percentile at Phi^-1(0.625); the Immerkaer kernel has an L2 norm of 6.
_NOISE_NORMALISER = 6.0 * 0.31864
_IMMERKAER = np.asarray([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


# -- input handling ------------------------------------------------------------------------------


def as_video_batch(videos: torch.Tensor | np.ndarray, min_frames: int = 2) -> np.ndarray:
    """Validate a batch of RGB videos and return it as float64 numpy ``(B, 3, F, H, W)`` in ``[-1, 1]``.

    Values outside ``[-1, 1]`` are clipped (generated videos overshoot slightly).

    Args:
        videos: Videos ``(B, 3, F, H, W)``.
        min_frames: Fewest frames a video must have.

    Returns:
        The clipped videos as a float64 array.

    Raises:
        ValueError: If the shape is not ``(B, 3, F, H, W)`` with ``B >= 1``, ``F >= min_frames`` and
            ``H, W >= 3``, or if a value is not finite.
    """
    if isinstance(videos, torch.Tensor):
        array = videos.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        array = np.asarray(videos, dtype=np.float64)
    if array.ndim != 5 or array.shape[1] != 3:
        raise ValueError(f"expected RGB videos (B, 3, F, H, W) in [-1, 1], got shape {tuple(array.shape)}")
    batch, _, num_frames, height, width = array.shape
    if batch < 1:
        raise ValueError("expected at least one video, got an empty batch")
    if num_frames < min_frames:
        raise ValueError(f"videos need at least {min_frames} frames here, got {num_frames}")
    if height < 3 or width < 3:
        raise ValueError(f"frames must be at least 3 x 3 pixels, got {height} x {width}")
    if not np.isfinite(array).all():
        raise ValueError("videos contain NaN or infinite values")
    return np.clip(array, -1.0, 1.0)


def as_single_video(video: torch.Tensor | np.ndarray, min_frames: int = 2) -> np.ndarray:
    """Validate one video ``(3, F, H, W)`` and return it as float64 numpy (see :func:`as_video_batch`)."""
    if video.ndim != 4:
        raise ValueError(f"expected one RGB video (3, F, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    return as_video_batch(video[None], min_frames=min_frames)[0]


def to_unit_rgb(video: np.ndarray) -> np.ndarray:
    """One video ``(3, F, H, W)`` from ``[-1, 1]`` to ``[0, 1]`` (clipped)."""
    return (np.clip(video, -1.0, 1.0) + 1.0) / 2.0


def _check_window_frames(window_frames: int) -> None:
    if window_frames < 2:
        raise ValueError(f"window_frames must be >= 2 (motion needs a frame pair), got {window_frames}")


# -- per-frame statistics ------------------------------------------------------------------------


def edge_strength(rgb: np.ndarray, top_fraction: float = _EDGE_TOP_FRACTION) -> np.ndarray:
    """Edge sharpness of each frame: mean of its strongest neighbour differences.

    Differences are taken between horizontal and vertical neighbours separately (so that corners
    count like straight edges) and the largest over the three channels is kept (so that the step
    between two saturated colours counts like the step from a colour to the background).

    Args:
        rgb: One video ``(3, F, H, W)`` in ``[0, 1]``.
        top_fraction: Fraction of the differences (the strongest edges) averaged.

    Returns:
        ``(F,)`` mean of the top ``top_fraction`` of the frame's absolute neighbour differences.
    """
    num_frames = rgb.shape[1]
    step_x = np.abs(np.diff(rgb, axis=3)).max(axis=0).reshape(num_frames, -1)  # (F, H*(W-1))
    step_y = np.abs(np.diff(rgb, axis=2)).max(axis=0).reshape(num_frames, -1)  # (F, (H-1)*W)
    return _top_mean(np.concatenate([step_x, step_y], axis=1), top_fraction)


def noise_level(rgb: np.ndarray) -> np.ndarray:
    """Robust noise sigma of each frame (``[0, 1]`` units), zero on clean piecewise-flat frames.

    The Immerkaer residual vanishes on flat and planar regions; the 25th percentile of its absolute
    value over pixels and channels ignores the edges of up to three quarters of the frame.

    Args:
        rgb: One video ``(3, F, H, W)`` in ``[0, 1]``.

    Returns:
        ``(F,)`` estimated standard deviation of white noise.
    """
    height, width = rgb.shape[2:]
    residual = sum(
        _IMMERKAER[row, col] * rgb[:, :, row : row + height - 2, col : col + width - 2]
        for row in range(3)
        for col in range(3)
    )  # (3, F, H-2, W-2)
    per_frame = np.abs(residual).transpose(1, 0, 2, 3).reshape(rgb.shape[1], -1)  # (F, 3*(H-2)*(W-2))
    return np.quantile(per_frame, _NOISE_QUANTILE, axis=1) / _NOISE_NORMALISER


def luma_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luma and chroma ``(F, H, W)`` of one video ``(3, F, H, W)`` in ``[0, 1]``."""
    luma = np.tensordot(_LUMA_WEIGHTS, rgb, axes=1)  # (F, H, W)
    chroma = rgb.max(axis=0) - rgb.min(axis=0)  # (F, H, W)
    return luma, chroma


def hue_turns(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in turns ``[0, 1)`` of every pixel of ``rgb`` ``(3, ...)`` in ``[0, 1]`` (0 where grey)."""
    red, green, blue = rgb
    high = rgb.max(axis=0)
    chroma = high - rgb.min(axis=0)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        high == red,
        np.mod((green - blue) / safe, 6.0),
        np.where(high == green, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    return np.where(chroma > 0, hue / 6.0, 0.0)


def _top_mean(values: np.ndarray, top_fraction: float) -> np.ndarray:
    """Mean of the largest ``top_fraction`` of each row of ``values`` ``(N, P)``: ``(N,)``."""
    count = max(1, round(top_fraction * values.shape[1]))
    top = np.partition(values, values.shape[1] - count, axis=1)[:, -count:]  # (N, count)
    return top.mean(axis=1)


def contrast_video(video: np.ndarray) -> np.ndarray:
    """The colour-contrast image of one video, as a grey RGB video for :func:`dense_flow`.

    Each pixel becomes its RGB distance to the frame's median colour (the background), divided by
    the largest possible distance ``2 * sqrt(3)``; the result is mapped to ``[-1, 1]`` and repeated
    over three channels. Objects then stand out by colour, not only by luma, and a global exposure
    shift leaves the image unchanged.

    Args:
        video: One video ``(3, F, H, W)`` in ``[-1, 1]``.

    Returns:
        ``(3, F, H, W)`` float32 grey video in ``[-1, 1]``.
    """
    num_frames = video.shape[1]
    median = np.median(video.reshape(3, num_frames, -1), axis=2)  # (3, F)
    distance = np.sqrt(((video - median[:, :, None, None]) ** 2).sum(axis=0)) / (2.0 * np.sqrt(3.0))
    grey = 2.0 * np.clip(distance, 0.0, 1.0) - 1.0  # (F, H, W)
    return np.repeat(grey[None], 3, axis=0).astype(np.float32)  # (3, F, H, W)


def motion_magnitudes(
    video: np.ndarray | torch.Tensor,
    top_fraction: float = _EDGE_TOP_FRACTION,
    method: str = "dis",
    upscale: int = 4,
) -> np.ndarray:
    """Motion of each frame pair: mean of the top ``top_fraction`` optical-flow magnitudes.

    The flow (:func:`sfpp.metrics.flow.dense_flow`) is taken on :func:`contrast_video`. Averaging
    only the largest magnitudes measures how fast the moving things move (in pixels per frame),
    independently of how much of the frame they cover.

    Args:
        video: One video ``(3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``.
        top_fraction: Fraction of the pixels averaged per frame pair.
        method: Flow method of :func:`dense_flow`.
        upscale: Upscaling factor of :func:`dense_flow`.

    Returns:
        ``(F - 1,)`` float64 magnitudes in pixels per frame.

    Raises:
        ValueError: For a bad video shape or ``top_fraction`` outside ``(0, 1]``.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    array = as_single_video(video)
    flow = dense_flow(contrast_video(array), method=method, upscale=upscale)  # (F-1, H, W, 2)
    magnitude = np.linalg.norm(flow.astype(np.float64), axis=-1)  # (F-1, H, W)
    return _top_mean(magnitude.reshape(magnitude.shape[0], -1), top_fraction)  # (F-1,)
