"""Temporal statistics of a video, frame by frame: flicker, brightness pulses, jitter, shaking.

The per-window drift components of :mod:`sfpp.metrics.stability` compare window means with the
first window's, which cannot see a video that flickers, pulses or shakes while its window averages
stay put. The statistics here look at consecutive frames instead. Each is a value per *centre*
frame ``t`` (or per frame pair ``(t, t+1)``) that uses the frames around it, whether or not they
belong to the same window, so that a failure falling on a window's first or last frame is seen
like any other (:func:`per_window` then groups the values by the window that holds ``t``). Frames
are RGB in ``[0, 1]``; ``M_t`` is frame ``t``'s mean colour ``(3,)`` and ``D(a, b)`` the mean
absolute difference of frames ``a`` and ``b``.

- :func:`colour_flicker`: ``||M_{t+1} - 2 M_t + M_{t-1}||_2``, the second difference of the mean
  colours: oscillation from frame to frame (a steady drift or a moving object costs little).
- :func:`colour_pulses`: how far a frame, or a run of two frames, stands out from *both* of its
  neighbours in the same direction (per channel the smaller of the two differences when they have
  the same sign, else 0; the norm over channels; the larger of the one- and two-frame values):
  a brightness or colour pulse, however rarely it comes. A step (an object entering) stands out
  from one side only and costs nothing.
- :func:`frame_returns`: ``(D(t-1, t) + D(t, t+1) - D(t-1, t+1)) / 2``, the change that comes back
  within a frame triple: 0 while the video keeps changing the same way, as large as the change
  when frames go back and forth (shaking, alternating content, grain that changes every frame).
- :func:`global_shifts` and :func:`back_and_forth`: the integer translation ``(dx, dy)`` (within
  ``radius`` pixels) that best maps each frame onto the next, and over the ``2 span`` pairs around
  each pair the path of those translations minus their net displacement (halved, per pair): a
  frame that moves back and forth as a whole (shaking with a period of up to ``2 span`` frames)
  walks a path with no net displacement, whereas objects moving on, even with pixel-rounded steps,
  walk as far as their path.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "back_and_forth",
    "colour_flicker",
    "colour_pulses",
    "frame_colours",
    "frame_returns",
    "global_shifts",
    "per_window",
]


def frame_colours(rgb: np.ndarray) -> np.ndarray:
    """Mean colour ``M_t`` of every frame of ``rgb`` ``(3, F, H, W)`` in ``[0, 1]``: ``(3, F)``."""
    return rgb.reshape(rgb.shape[0], rgb.shape[1], -1).mean(axis=2)  # (3, F, H*W) -> (3, F)


def _same_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per channel the smaller of ``|a|`` and ``|b|`` where they have the same sign, else 0; norm over channels."""
    same = np.sign(a) * np.sign(b) > 0
    return np.linalg.norm(np.where(same, np.minimum(np.abs(a), np.abs(b)), 0.0), axis=0)


def colour_flicker(colours: np.ndarray) -> np.ndarray:
    """Second difference of the mean colours ``(3, F)`` at every centre frame: ``(F,)``, NaN at both ends."""
    values = np.full(colours.shape[1], np.nan)
    if colours.shape[1] >= 3:
        second = colours[:, 2:] - 2.0 * colours[:, 1:-1] + colours[:, :-2]  # (3, F-2): centres 1..F-2
        values[1:-1] = np.linalg.norm(second, axis=0)
    return values


def colour_pulses(colours: np.ndarray) -> np.ndarray:
    """How far each frame, or the two-frame run it starts, stands out from both neighbours: ``(F,)``.

    Args:
        colours: Mean colours ``(3, F)``.

    Returns:
        The larger of the one-frame value (frames ``1..F-2``) and the two-frame run's (runs
        starting at ``1..F-3``); NaN where neither is defined.
    """
    num_frames = colours.shape[1]
    values = np.full(num_frames, np.nan)
    if num_frames >= 3:
        single = _same_side(colours[:, 1:-1] - colours[:, :-2], colours[:, 1:-1] - colours[:, 2:])  # (F-2,)
        values[1:-1] = single
    if num_frames >= 4:
        run = (colours[:, 1:-2] + colours[:, 2:-1]) / 2.0  # (3, F-3): runs (t, t+1) for t = 1..F-3
        double = _same_side(run - colours[:, :-3], run - colours[:, 3:])
        values[1:-2] = np.fmax(values[1:-2], double)
    return values


def frame_returns(rgb: np.ndarray) -> np.ndarray:
    """Change that comes back within the triple centred on every frame: ``(F,)``, NaN at both ends.

    Args:
        rgb: Frames ``(3, F, H, W)`` in ``[0, 1]``.
    """
    values = np.full(rgb.shape[1], np.nan)
    if rgb.shape[1] < 3:
        return values

    def distance(a: slice, b: slice) -> np.ndarray:
        return np.abs(rgb[:, a] - rgb[:, b]).mean(axis=(0, 2, 3))  # (F-2,)

    path = distance(slice(1, -1), slice(None, -2)) + distance(slice(2, None), slice(1, -1))
    values[1:-1] = (path - distance(slice(2, None), slice(None, -2))) / 2.0  # >= 0: triangle inequality
    return values


def global_shifts(rgb: np.ndarray, radius: int = 3) -> np.ndarray:
    """The integer translation that best maps each frame onto the next: ``(F-1, 2)`` as ``(dx, dy)``.

    The frames are compared on their interior (``radius`` pixels from each border cut off) by mean
    absolute difference; no translation wins ties, the shorter one otherwise.

    Args:
        rgb: Frames ``(3, F, H, W)`` in ``[0, 1]``, ``H, W > 2 radius``.
        radius: Largest translation tried, in pixels.

    Raises:
        ValueError: For frames too small for ``radius``.
    """
    _, num_frames, height, width = rgb.shape
    if min(height, width) <= 2 * radius:
        raise ValueError(f"frames of {height}x{width} are too small for shifts of up to {radius} px")
    inner = (slice(radius, height - radius), slice(radius, width - radius))
    earlier = rgb[:, :-1, inner[0], inner[1]]  # (3, F-1, H-2r, W-2r)
    best = np.abs(earlier - rgb[:, 1:, inner[0], inner[1]]).mean(axis=(0, 2, 3))  # (F-1,): no shift
    shifts = np.zeros((num_frames - 1, 2))
    offsets = sorted(
        ((dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1) if dx or dy),
        key=lambda o: o[0] ** 2 + o[1] ** 2,
    )
    for dx, dy in offsets:
        later = rgb[:, 1:, radius + dy : height - radius + dy, radius + dx : width - radius + dx]
        error = np.abs(earlier - later).mean(axis=(0, 2, 3))  # (F-1,)
        better = error < best - 1e-9
        best = np.where(better, error, best)
        shifts[better] = (dx, dy)
    return shifts


def back_and_forth(shifts: np.ndarray, span: int = 4) -> np.ndarray:
    """Path minus net displacement of the translations around every pair, halved, per pair: ``(F-1,)``.

    Args:
        shifts: Translations ``(F-1, 2)`` of :func:`global_shifts`.
        span: Pairs on each side (the pairs ``t - span .. t + span - 1`` around pair ``t``).
    """
    values = np.zeros(shifts.shape[0])
    for pair in range(shifts.shape[0]):
        around = shifts[max(0, pair - span) : pair + span]  # (<= 2 span, 2)
        path = np.linalg.norm(around, axis=1).sum()
        values[pair] = (path - np.linalg.norm(around.sum(axis=0))) / (2.0 * around.shape[0])
    return values


def per_window(values: np.ndarray, num_windows: int, window_frames: int, reduce: str = "mean") -> np.ndarray:
    """Group per-frame (or per-pair) values by the window holding their frame: ``(K,)``.

    Args:
        values: ``(n,)`` with ``n <= K * window_frames``, value ``t`` belonging to frame ``t``; NaN
            where undefined (left out).
        num_windows: ``K``.
        window_frames: Frames per window.
        reduce: ``"mean"`` or ``"max"`` over a window's defined values (0 when it has none).

    Raises:
        ValueError: For another ``reduce``.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    padded = np.full(num_windows * window_frames, np.nan)
    padded[: values.shape[0]] = values[: num_windows * window_frames]
    grouped = padded.reshape(num_windows, window_frames)  # (K, W)
    defined = ~np.isnan(grouped)
    filled = np.where(defined, grouped, 0.0 if reduce == "mean" else -np.inf)
    counts = defined.sum(axis=1)
    result = filled.sum(axis=1) / np.maximum(counts, 1) if reduce == "mean" else filled.max(axis=1)
    return np.where(counts > 0, result, 0.0)
