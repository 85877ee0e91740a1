"""Quality along long videos: a per-window Frechet distance to real clips, and the dynamic degree.

:class:`WindowQuality` describes every frame by a small vector of hand-made, deterministic features
that need no weights (:data:`FEATURE_NAMES`):

- colour histogram: the fraction of pixels with chroma ``> 0.3`` whose hue falls in each of the six
  60-degree sectors centred on the world's palette hues (red, yellow, green, cyan, blue, magenta);
- objects: the number of 8-connected components (at least 2 px) of strongly coloured pixels
  (chroma ``> 0.5``);
- exposure: mean, standard deviation and median (background) of the luma, 97th percentile of chroma;
- detail and noise: :func:`~sfpp.metrics.frame_stats.edge_strength` and
  :func:`~sfpp.metrics.frame_stats.noise_level`;
- motion: :func:`~sfpp.metrics.frame_stats.motion_magnitudes` of the frame pair ending at the frame
  (the first frame takes the first pair).

The real statistics (mean and covariance of the features) are fitted on frames of real clips
(:func:`feature_statistics`; for the built-in world,
:func:`sfpp.world.reference.world_feature_statistics` renders and caches them). Features are standardised by the real mean and standard deviation (floored at
``std_floor``, so that features real videos never vary, like the noise level, stay finite). For the
``k``-th window of ``window_frames`` frames, the frames of that window of every video seen form a
Gaussian ``(mu_k, Sigma_k)``, and the curve is the Frechet distance

    ``FD_k = ||mu_k - mu_r||^2 + Tr(Sigma_k + Sigma_r - 2 (Sigma_r^1/2 Sigma_k Sigma_r^1/2)^1/2)``.

Lower is better; real clips stay near the finite-sample floor while drifting videos climb along the
curve. :meth:`WindowQuality.parts` splits each ``FD_k`` into its mean term and covariance term and
gives the mean term per feature (the signed standardised shift ``mu_k - mu_r`` of each feature, whose
squares sum to the mean term), so that a rising curve can be traced to the features that drift.
:class:`DynamicDegree` is the mean motion of videos in pixels per frame with the fraction of
frame pairs above a motion threshold (VBench's dynamic degree, measured on every frame pair).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sfpp.metrics.frame_stats import (
    as_single_video,
    as_video_batch,
    edge_strength,
    hue_turns,
    luma_chroma,
    motion_magnitudes,
    noise_level,
    to_unit_rgb,
)

__all__ = [
    "FEATURE_NAMES",
    "DynamicDegree",
    "FeatureStatistics",
    "FrechetParts",
    "WindowQuality",
    "frame_features",
    "frechet_distance",
    "feature_statistics",
]

#: Names of the per-frame features, in the order of :func:`frame_features`' columns.
FEATURE_NAMES: tuple[str, ...] = (
    "hue_red",
    "hue_yellow",
    "hue_green",
    "hue_cyan",
    "hue_blue",
    "hue_magenta",
    "num_objects",
    "luma_mean",
    "luma_std",
    "luma_median",
    "chroma_p97",
    "edge_strength",
    "noise_level",
    "motion",
)

_HUE_MIN_CHROMA = 0.3
_OBJECT_MIN_CHROMA = 0.5
_OBJECT_MIN_PIXELS = 2


# -- features ------------------------------------------------------------------------------------


def _object_counts(chroma: np.ndarray) -> np.ndarray:
    """Number of strongly coloured 8-connected components of each frame of ``chroma`` ``(F, H, W)``."""
    masks = (chroma > _OBJECT_MIN_CHROMA).astype(np.uint8)  # (F, H, W)
    counts = np.empty(masks.shape[0])
    for index, mask in enumerate(masks):
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        counts[index] = np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= _OBJECT_MIN_PIXELS)
    return counts


def frame_features(
    video: np.ndarray | torch.Tensor, flow_method: str = "dis", flow_upscale: int = 4
) -> np.ndarray:
    """Hand-made features of every frame of one video (see the module docstring).

    Args:
        video: One video ``(3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``.
        flow_method: Optical-flow method of the motion feature.
        flow_upscale: Optical-flow upscaling factor.

    Returns:
        Float64 ``(F, len(FEATURE_NAMES))``.

    Raises:
        ValueError: For a bad shape or fewer than two frames.
    """
    array = as_single_video(video)  # (3, F, H, W)
    num_frames = array.shape[1]
    rgb = to_unit_rgb(array)
    luma, chroma = luma_chroma(rgb)  # (F, H, W) each
    sectors = np.floor(hue_turns(rgb) * 6.0 + 0.5).astype(np.int64) % 6  # (F, H, W): 0 = red, 1 = yellow, ...
    coloured = chroma > _HUE_MIN_CHROMA  # (F, H, W)
    hue_fractions = np.stack(
        [(coloured & (sectors == sector)).mean(axis=(1, 2)) for sector in range(6)], axis=1
    )  # (F, 6)
    motion = motion_magnitudes(array, method=flow_method, upscale=flow_upscale)  # (F-1,)
    flat_luma = luma.reshape(num_frames, -1)  # (F, H*W)
    columns = [
        _object_counts(chroma),
        flat_luma.mean(axis=1),
        flat_luma.std(axis=1),
        np.median(flat_luma, axis=1),
        np.quantile(chroma.reshape(num_frames, -1), 0.97, axis=1),  # (F, H*W) -> (F,)
        edge_strength(rgb),
        noise_level(rgb),
        np.concatenate([motion[:1], motion]),  # frame t takes the pair (t-1, t); frame 0 the pair (0, 1)
    ]
    return np.concatenate([hue_fractions, np.stack(columns, axis=1)], axis=1)  # (F, D)


# -- real statistics and the Frechet distance ----------------------------------------------------


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean, covariance and standard deviation of frame features of real clips.

    Attributes:
        mean: ``(D,)``.
        cov: ``(D, D)``.
        std: ``(D,)`` square root of the covariance's diagonal.
        num_frames: Number of frames the statistics were fitted on.
    """

    mean: np.ndarray
    cov: np.ndarray
    std: np.ndarray
    num_frames: int


def feature_statistics(
    clips: Iterable[np.ndarray], flow_method: str = "dis", flow_upscale: int = 4
) -> FeatureStatistics:
    """Feature statistics of real clips: the reference a :class:`WindowQuality` compares with.

    Args:
        clips: Real videos, each ``(F, H, W, 3)`` in ``[-1, 1]`` with ``F >= 2``; at least two frames
            in all.
        flow_method: Optical-flow method of the motion feature.
        flow_upscale: Optical-flow upscaling factor.

    Returns:
        Read-only statistics over every frame of ``clips``.

    Raises:
        ValueError: For fewer than two frames in all.
    """
    features = [frame_features(clip, flow_method, flow_upscale) for clip in clips]
    if not features or sum(len(f) for f in features) < 2:
        raise ValueError("feature_statistics needs real clips with at least two frames in all")
    stacked = np.concatenate(features)  # (frames, D)
    mean = stacked.mean(axis=0)
    cov = np.cov(stacked, rowvar=False)
    std = np.sqrt(np.diag(cov))
    for array in (mean, cov, std):
        array.setflags(write=False)
    return FeatureStatistics(mean=mean, cov=cov, std=std, num_frames=int(stacked.shape[0]))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between two Gaussians; exact for singular covariances.

    Uses ``Tr((A B)^1/2) = Tr((B^1/2 A B^1/2)^1/2)`` with symmetric eigendecompositions.

    Args:
        mean_a: ``(D,)``.
        cov_a: ``(D, D)``.
        mean_b: ``(D,)``.
        cov_b: ``(D, D)``.

    Returns:
        The squared distance ``||mu_a - mu_b||^2 + Tr(A + B - 2 (A B)^1/2)`` (>= 0).
    """
    root_b = _psd_sqrt(cov_b)
    cross = np.linalg.eigvalsh(root_b @ cov_a @ root_b)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(distance, 0.0)


@dataclass(frozen=True)
class FrechetParts:
    """The per-window Frechet distances of a :class:`WindowQuality`, split into their two terms.

    Attributes:
        mean_shift: ``(K, D)`` each feature's standardised window mean minus the real one (signed;
            columns in the order of :data:`FEATURE_NAMES`).
        mean_term: ``(K,)`` ``||mu_k - mu_r||^2``, the sum of the squared shifts.
        cov_term: ``(K,)`` the rest of the distance (the covariance term), so that
            ``mean_term + cov_term`` is the curve of :meth:`WindowQuality.compute`.
    """

    mean_shift: np.ndarray
    mean_term: np.ndarray
    cov_term: np.ndarray

    @property
    def distance(self) -> np.ndarray:
        """``(K,)`` the Frechet distances ``mean_term + cov_term``."""
        return self.mean_term + self.cov_term


# -- metrics -------------------------------------------------------------------------------------


class WindowQuality(Metric):
    """Per-window Frechet distance of frame features to real clips (lower is better).

    ``update(videos)`` takes ``(B, 3, F, H, W)`` in ``[-1, 1]``; every update must give the same
    number of windows ``K = F // window_frames``. ``compute()`` returns the ``(K,)`` curve
    ``FD_k`` over the windows of all videos seen (see the module docstring).

    Args:
        window_frames: Frames per window (``>= 2``); windows do not overlap.
        std_floor: Smallest standard deviation a feature is divided by when standardised.
        reference: The real clips' feature statistics (:func:`feature_statistics`), or a callable
            without arguments that returns them (called once, at the first ``compute``), so that
            building the metric costs nothing.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: For ``window_frames < 2`` or ``std_floor <= 0``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        reference: FeatureStatistics | Callable[[], FeatureStatistics],
        window_frames: int = 8,
        std_floor: float = 0.02,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if window_frames < 2:
            raise ValueError(f"window_frames must be >= 2, got {window_frames}")
        if std_floor <= 0:
            raise ValueError(f"std_floor must be > 0, got {std_floor}")
        self.window_frames = window_frames
        self.std_floor = std_floor
        self.reference = reference
        self.add_state("window_features", default=[], dist_reduce_fx="cat")

    def real_statistics(self) -> FeatureStatistics:
        """The real statistics this metric compares with (a callable reference is called once)."""
        if not isinstance(self.reference, FeatureStatistics):
            self.reference = self.reference()
        return self.reference

    def update(self, videos: torch.Tensor) -> None:
        """Add a batch of videos ``(B, 3, F, H, W)``; ``F // window_frames`` must match earlier updates.

        Raises:
            ValueError: For a bad shape, a video shorter than one window, or a number of windows
                different from the videos seen before.
        """
        batch = as_video_batch(videos, min_frames=self.window_frames)
        num_windows = batch.shape[2] // self.window_frames
        if self.window_features and self.window_features[0].shape[1] != num_windows:
            raise ValueError(
                f"videos of this update have {num_windows} windows of {self.window_frames} frames but "
                f"earlier ones had {self.window_features[0].shape[1]}; give every update the same length"
            )
        used = num_windows * self.window_frames
        features = np.stack([frame_features(video[:, :used]) for video in batch])  # (B, K*W, D)
        features = features.reshape(len(batch), num_windows, self.window_frames, -1)  # (B, K, W, D)
        self.window_features.append(torch.from_numpy(features).to(self.device))

    def _windows(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per window: the standardised mean ``(D,)`` and covariance ``(D, D)``, and the real covariance."""
        if not self.window_features:
            raise ValueError("WindowQuality has no videos yet; call update(videos) first")
        features = dim_zero_cat(self.window_features).cpu().numpy()  # (N, K, W, D)
        real = self.real_statistics()
        scale = np.maximum(real.std, self.std_floor)  # (D,)
        real_cov = real.cov / np.outer(scale, scale)  # standardised real covariance
        for window in range(features.shape[1]):
            samples = features[:, window].reshape(-1, features.shape[-1])  # (N, W, D) -> (N*W, D)
            standard = (samples - real.mean) / scale
            yield standard.mean(axis=0), np.cov(standard, rowvar=False), real_cov  # N*W >= 2 samples

    def compute(self) -> torch.Tensor:
        """The ``(K,)`` float32 curve of Frechet distances, one per window."""
        curve = [
            frechet_distance(mean, cov, np.zeros_like(mean), real_cov)
            for mean, cov, real_cov in self._windows()
        ]
        return torch.tensor(curve, dtype=torch.float32)

    def parts(self) -> FrechetParts:
        """The curve of :meth:`compute` split into mean and covariance terms, the mean term per feature.

        Returns:
            :class:`FrechetParts` in float64; its ``distance`` equals :meth:`compute` (which rounds to
            float32).

        Raises:
            ValueError: Before the first ``update``.
        """
        shifts, mean_terms, cov_terms = [], [], []
        for mean, cov, real_cov in self._windows():
            distance = frechet_distance(mean, cov, np.zeros_like(mean), real_cov)
            mean_term = float(np.sum(mean**2))
            shifts.append(mean)
            mean_terms.append(mean_term)
            cov_terms.append(distance - mean_term)
        return FrechetParts(np.stack(shifts), np.asarray(mean_terms), np.asarray(cov_terms))


class DynamicDegree(Metric):
    """Dynamic degree of videos: mean motion (px/frame) and the fraction of moving frame pairs.

    The motion of a frame pair is :func:`~sfpp.metrics.frame_stats.motion_magnitudes`: the mean of
    its top ``top_fraction`` optical-flow magnitudes, i.e. how fast the moving things move (for the
    built-in world, the speed of the fastest object; about 0.6 px/frame). ``compute()`` returns
    ``{"dynamic_degree": mean over all frame pairs, "moving_fraction": fraction of pairs whose
    motion exceeds motion_threshold}``; a frozen video scores ~0 on both.

    Args:
        motion_threshold: Motion in px/frame above which a pair counts as moving.
        top_fraction: Fraction of the pixels averaged per pair.
        flow_method: Optical-flow method.
        flow_upscale: Optical-flow upscaling factor.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: For ``motion_threshold < 0`` or ``top_fraction`` outside ``(0, 1]``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        motion_threshold: float = 0.1,
        top_fraction: float = 0.03,
        flow_method: str = "dis",
        flow_upscale: int = 4,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if motion_threshold < 0:
            raise ValueError(f"motion_threshold must be >= 0 px/frame, got {motion_threshold}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.motion_threshold = motion_threshold
        self.top_fraction = top_fraction
        self.flow_method = flow_method
        self.flow_upscale = flow_upscale
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("motion_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("num_pairs", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("num_moving", default=zero.clone(), dist_reduce_fx="sum")

    def update(self, videos: torch.Tensor) -> None:
        """Add a batch of videos ``(B, 3, F, H, W)`` in ``[-1, 1]``, ``F >= 2``."""
        batch = as_video_batch(videos, min_frames=2)
        motion = np.concatenate(
            [
                motion_magnitudes(video, self.top_fraction, self.flow_method, self.flow_upscale)
                for video in batch
            ]
        )  # (B * (F-1),)
        self.motion_sum += float(motion.sum())
        self.num_pairs += float(motion.size)
        self.num_moving += float(np.count_nonzero(motion > self.motion_threshold))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"dynamic_degree": px/frame, "moving_fraction": in [0, 1]}`` as float32 scalars."""
        if self.num_pairs == 0:
            raise ValueError("DynamicDegree has no videos yet; call update(videos) first")
        return {
            "dynamic_degree": (self.motion_sum / self.num_pairs).float(),
            "moving_fraction": (self.num_moving / self.num_pairs).float(),
        }
