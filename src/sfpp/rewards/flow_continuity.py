r"""Optical-flow continuity reward: smooth motion scores high; cuts, jumps and freezes score low.

The flow comes from :mod:`sfpp.metrics.flow` (OpenCV DIS by default). For a video of ``F`` frames
with ``P = F - 1`` consecutive frame pairs (pair ``i`` is frame ``i -> i + 1``)::

    m_i   = mean flow magnitude of pair i, in pixels per frame                     (P,)
    mb_j  = mean of m over the window of w = min(window_pairs, P) pairs from j     (P - w + 1,)
    c_j   = |mb_{j+1} - mb_j| / (mb_j + mb_{j+1} + eps_px)        in [0, 1)        (P - w,)
    r_i   = mean |I_i - warp(I_{i+1}, flow_i)| over pixels and RGB channels        (P,)
    u_i   = r_i^2 / (r_i^2 + residual_scale^2)                    in [0, 1)        (P,)
    floor = max(min_motion_px, min_motion_ratio * median(mb))
    z_j   = clip(1 - mb_j / floor, 0, 1)                          in [0, 1]        (P - w + 1,)

    agg(x) = (1 - spike_weight) * mean(x) + spike_weight * max(x)   (0 for an empty x)
    D      = (flow_weight * agg(c) + cut_weight * agg(u)) / (flow_weight + cut_weight)
    Z      = mean(z)
    score  = (1 - D) * (1 - Z)                                    in [0, 1], higher is better

- ``c`` is the relative change of the flow magnitude between consecutive frame pairs: sudden
  accelerations, jumps and the start or end of a freeze. Magnitudes are averaged over a short
  window first because on small frames objects move by whole pixels, so the per-pair magnitude of
  perfectly smooth slow motion alternates between zero and a pixel step.
- ``u`` catches what the flow cannot explain: after a cut (a different scene) or a teleport, frame
  ``i + 1`` warped back along the flow does not match frame ``i``, whereas the flow on a cut can be
  small. The residual is measured in the ``[-1, 1]`` units of the video (so ``r <= 2``);
  ``residual_scale`` is the residual that counts as half a cut. It is not measured relative to the
  video's own residual, so flicker on every frame is penalised too.
- ``z`` penalises frozen stretches: a window whose motion falls below ``floor`` (a fraction of the
  video's own median motion, and at least ``min_motion_px``) is (partly) frozen. A still video has
  ``Z = 1`` and scores 0, so freezing is never a way to avoid the continuity penalties.
- ``agg`` mixes the mean (how often) with the maximum (the worst spike: a single cut matters).

Frames of the built-in world (16 x 16) are enlarged ``upscale`` times before the flow is computed,
see :func:`sfpp.metrics.flow.dense_flow`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from sfpp.metrics.flow import dense_flow, flow_magnitudes
from sfpp.rewards.base import Reward

__all__ = [
    "ContinuityTerms",
    "FlowContinuityReward",
    "frozen_penalties",
    "magnitude_changes",
    "moving_average",
    "photometric_residuals",
    "render_flow",
]


def _as_video_array(video: Tensor | np.ndarray) -> np.ndarray:
    """One RGB video ``(3, F, H, W)`` as a float32 numpy array (raises ``ValueError`` otherwise)."""
    array = (
        video.detach().float().cpu().numpy() if isinstance(video, Tensor) else np.asarray(video, np.float32)
    )
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"expected one RGB video (3, F, H, W) in [-1, 1], got shape {array.shape}")
    return array


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of every run of ``window`` consecutive values: ``(N,) -> (N - window + 1,)``.

    Raises:
        ValueError: If ``window`` is not in ``[1, N]``.
    """
    if not 1 <= window <= len(values):
        raise ValueError(f"window must be in [1, {len(values)}] for {len(values)} values, got {window}")
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])  # (N + 1,)
    return (cumulative[window:] - cumulative[:-window]) / window


def magnitude_changes(magnitudes: np.ndarray, eps_px: float) -> np.ndarray:
    """Relative change between consecutive magnitudes, ``|b - a| / (a + b + eps_px)``: ``(N,) -> (N - 1,)``."""
    before, after = magnitudes[:-1], magnitudes[1:]
    return np.abs(after - before) / (before + after + eps_px)


def photometric_residuals(video: Tensor | np.ndarray, flow: np.ndarray) -> np.ndarray:
    """How badly each next frame, warped back along the flow, matches the frame before it.

    Args:
        video: One RGB video ``(3, F, H, W)`` in ``[-1, 1]``.
        flow: Its flow ``(F - 1, H, W, 2)`` from :func:`sfpp.metrics.flow.dense_flow`, ``(dx, dy)``
            per pixel of the earlier frame.

    Returns:
        Mean absolute residual per frame pair ``(F - 1,)``, in the video's units (``[0, 2]``).

    Raises:
        ValueError: If the shapes of the video and the flow do not match.
    """
    frames = _as_video_array(video).transpose(1, 2, 3, 0)  # (3, F, H, W) -> (F, H, W, 3)
    num_frames, height, width, _ = frames.shape
    if flow.shape != (num_frames - 1, height, width, 2):
        raise ValueError(
            f"flow of shape {flow.shape} does not fit a video of {num_frames} frames of {height}x{width}"
        )
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    residuals = np.empty(num_frames - 1, dtype=np.float64)
    for index in range(num_frames - 1):
        map_x = grid_x + flow[index, ..., 0]  # (H, W): where each pixel of frame i went
        map_y = grid_y + flow[index, ..., 1]
        warped = cv2.remap(
            np.ascontiguousarray(frames[index + 1]),
            map_x,
            map_y,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # (H, W, 3): frame i + 1 pulled back onto frame i
        residuals[index] = np.abs(warped - frames[index]).mean()
    return residuals


def frozen_penalties(
    window_magnitudes: np.ndarray, min_motion_ratio: float, min_motion_px: float
) -> np.ndarray:
    """Per window, how far its motion falls below the floor: ``clip(1 - mb / floor, 0, 1)``.

    The floor is ``max(min_motion_px, min_motion_ratio * median(window_magnitudes))``.

    Args:
        window_magnitudes: Window-averaged flow magnitudes ``(N,)``.
        min_motion_ratio: Fraction of the video's median motion below which a window counts as frozen.
        min_motion_px: Absolute floor in pixels per frame (catches videos that are still throughout).

    Returns:
        Penalties ``(N,)`` in ``[0, 1]``: 0 for enough motion, 1 for none.
    """
    floor = max(min_motion_px, min_motion_ratio * float(np.median(window_magnitudes)))
    return np.clip(1.0 - window_magnitudes / floor, 0.0, 1.0)


def _aggregate(values: np.ndarray, spike_weight: float) -> float:
    """``(1 - spike_weight) * mean + spike_weight * max`` of penalties in ``[0, 1]``; 0 if there are none."""
    if values.size == 0:
        return 0.0
    return float((1.0 - spike_weight) * values.mean() + spike_weight * values.max())


@dataclass(frozen=True)
class ContinuityTerms:
    """Every intermediate of the continuity score of one video (see the module docstring).

    Args:
        magnitudes: ``m``, mean flow magnitude per frame pair ``(P,)``.
        window_magnitudes: ``mb``, window-averaged magnitudes ``(P - w + 1,)``.
        changes: ``c``, relative magnitude changes ``(P - w,)``.
        residuals: ``r``, photometric residuals ``(P,)``.
        cut_penalties: ``u``, per-pair cut penalties ``(P,)``.
        frozen: ``z``, per-window frozen penalties ``(P - w + 1,)``.
        discontinuity: ``D`` in ``[0, 1]``.
        frozen_fraction: ``Z`` in ``[0, 1]``.
        score: ``(1 - D) * (1 - Z)`` in ``[0, 1]``.
    """

    magnitudes: np.ndarray
    window_magnitudes: np.ndarray
    changes: np.ndarray
    residuals: np.ndarray
    cut_penalties: np.ndarray
    frozen: np.ndarray
    discontinuity: float
    frozen_fraction: float
    score: float


class FlowContinuityReward(Reward):
    """Rewards temporally continuous motion: no cuts, no jumps, no freezes; score in ``[0, 1]``.

    The formula is in the module docstring. The prompt is not used.

    Args:
        method: Flow method of :func:`sfpp.metrics.flow.dense_flow` (``"dis"`` or ``"farneback"``).
        upscale: Enlargement of the frames before the flow is computed (4 suits 16 x 16 frames; use
            1 for full-size videos).
        window_pairs: Frame pairs the magnitudes are averaged over before comparing and checking
            for freezes (``w``; clipped to the number of pairs).
        eps_px: Pixels per frame added to the denominator of the relative change, so that noise
            between two nearly still windows does not count as a jump.
        residual_scale: Photometric residual (in ``[-1, 1]`` units) that counts as half a cut.
        min_motion_ratio: A window moving less than this fraction of the video's median motion is
            frozen.
        min_motion_px: A window moving less than this many pixels per frame is always frozen.
        spike_weight: Weight of the worst pair against the mean in ``agg``, in ``[0, 1]``.
        flow_weight: Weight of the magnitude-change penalty in ``D``.
        cut_weight: Weight of the cut (photometric residual) penalty in ``D``.

    Raises:
        ValueError: For settings out of range, naming the setting.
    """

    min_frames = 2

    def __init__(
        self,
        method: str = "dis",
        upscale: int = 4,
        window_pairs: int = 4,
        eps_px: float = 0.05,
        residual_scale: float = 0.1,
        min_motion_ratio: float = 0.25,
        min_motion_px: float = 0.01,
        spike_weight: float = 0.5,
        flow_weight: float = 1.0,
        cut_weight: float = 1.0,
    ) -> None:
        checks = {
            "upscale": upscale >= 1,
            "window_pairs": window_pairs >= 1,
            "eps_px": eps_px > 0.0,
            "residual_scale": residual_scale > 0.0,
            "min_motion_ratio": 0.0 <= min_motion_ratio <= 1.0,
            "min_motion_px": min_motion_px > 0.0,
            "spike_weight": 0.0 <= spike_weight <= 1.0,
            "flow_weight": flow_weight >= 0.0,
            "cut_weight": cut_weight >= 0.0,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(
                    f"FlowContinuityReward: invalid {name}={locals()[name]!r} (upscale and window_pairs >= 1; "
                    "eps_px, residual_scale, min_motion_px > 0; min_motion_ratio, spike_weight in [0, 1]; "
                    "weights >= 0)"
                )
        if flow_weight + cut_weight <= 0.0:
            raise ValueError("FlowContinuityReward: flow_weight + cut_weight must be > 0")
        if method not in ("dis", "farneback"):
            raise ValueError(f"FlowContinuityReward: unknown method={method!r}; choose 'dis' or 'farneback'")
        self.method = method
        self.upscale = upscale
        self.window_pairs = window_pairs
        self.eps_px = eps_px
        self.residual_scale = residual_scale
        self.min_motion_ratio = min_motion_ratio
        self.min_motion_px = min_motion_px
        self.spike_weight = spike_weight
        self.flow_weight = flow_weight
        self.cut_weight = cut_weight

    def terms(self, video: Tensor | np.ndarray) -> ContinuityTerms:
        """All intermediates of the score of one video, for inspection and logging.

        Args:
            video: One RGB video ``(3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``.

        Returns:
            The terms; ``terms(video).score == score_video(video, prompt)``.
        """
        frames = _as_video_array(video)  # (3, F, H, W)
        flow = dense_flow(frames, self.method, self.upscale)  # (P, H, W, 2)
        magnitudes = flow_magnitudes(flow).astype(np.float64)  # (P,)
        window = min(self.window_pairs, len(magnitudes))
        window_magnitudes = moving_average(magnitudes, window)  # (P - w + 1,)
        changes = magnitude_changes(window_magnitudes, self.eps_px)  # (P - w,)
        residuals = photometric_residuals(frames, flow)  # (P,)
        cut_penalties = residuals**2 / (residuals**2 + self.residual_scale**2)  # (P,)
        frozen = frozen_penalties(window_magnitudes, self.min_motion_ratio, self.min_motion_px)
        discontinuity = (
            self.flow_weight * _aggregate(changes, self.spike_weight)
            + self.cut_weight * _aggregate(cut_penalties, self.spike_weight)
        ) / (self.flow_weight + self.cut_weight)
        frozen_fraction = float(frozen.mean())
        return ContinuityTerms(
            magnitudes=magnitudes,
            window_magnitudes=window_magnitudes,
            changes=changes,
            residuals=residuals,
            cut_penalties=cut_penalties,
            frozen=frozen,
            discontinuity=discontinuity,
            frozen_fraction=frozen_fraction,
            score=(1.0 - discontinuity) * (1.0 - frozen_fraction),
        )

    def score_video(self, video: Tensor, prompt: str) -> float:
        """The continuity score of one video ``(3, F, H, W)`` in ``[0, 1]`` (the prompt is unused)."""
        return self.terms(video).score

    def score_batch(self, videos: Tensor, prompts: list[str]) -> Tensor:
        """Scores ``(B,)`` of videos ``(B, 3, F, H, W)``, copied to the CPU once."""
        frames = videos.detach().to(device="cpu", dtype=torch.float32)  # (B, 3, F, H, W)
        return torch.tensor([self.terms(video).score for video in frames], dtype=torch.float32)


def render_flow(
    video: Tensor | np.ndarray, method: str = "dis", upscale: int = 4, per_frame_scale: bool = False
) -> np.ndarray:
    """Colour the flow between consecutive frames for logging next to the video (``flow_vis`` wheel).

    Hue is the direction, saturation the speed.

    Args:
        video: One RGB video ``(3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``.
        method: Flow method of :func:`sfpp.metrics.flow.dense_flow`.
        upscale: Enlargement of the frames before the flow is computed.
        per_frame_scale: Normalise every frame by its own largest flow (``flow_vis.flow_to_color``);
            by default all frames share the video's largest flow (``flow_vis.flow_uv_to_colors``
            on the flow divided by it), so a freeze shows as white and a jump as a saturated frame.

    Returns:
        RGB ``uint8`` images ``(F - 1, H, W, 3)``.
    """
    try:
        import flow_vis
    except ImportError as error:  # the apps extra: pip install 'sfpp[apps]'
        raise ImportError("render_flow needs flow_vis: pip install 'sfpp[apps]' (or flow_vis)") from error
    flow = dense_flow(_as_video_array(video), method, upscale)  # (P, H, W, 2)
    if per_frame_scale:
        return np.stack([flow_vis.flow_to_color(pair) for pair in flow])  # (P, H, W, 3)
    # flow_to_color divides each frame by its own largest radius; for a shared scale, divide by
    # the video's largest radius and colour with the wheel flow_to_color itself uses.
    scaled = flow / max(float(np.linalg.norm(flow, axis=-1).max()), 1e-6)  # (P, H, W, 2), radii <= 1
    return np.stack(
        [flow_vis.flow_uv_to_colors(pair[..., 0], pair[..., 1]) for pair in scaled]
    )  # (P, H, W, 3)
