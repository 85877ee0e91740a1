"""Object-level quality of videos of the built-in world: are the prompted objects there, whole, moving?

Every pixel is labelled with the nearest palette colour when it is within ``colour_threshold`` of
it (RGB distance in ``[-1, 1]`` units) and as background otherwise; the world's backgrounds are
far from every palette colour. Per frame and prompted colour, 8-connected components are found
with OpenCV. A frame is *clean* when

- the front (first-named) object is its colour's largest component, with an area in the range the
  world renders for its shape (``size_tolerance`` either side);
- the back object is either its colour's largest component with a plausible area, or, when its
  pixels touch the front object (occlusion), any number of touching pieces with an area no larger
  than plausible and large enough that the front object could hide the rest; it may vanish completely only behind the front object, i.e. when the nearest
  frames where it is visible (before and after) show it touching the front object;
- all other coloured pixels (other colours, extra pieces) add up to at most ``max_stray_pixels``.

Whole objects (the front one, and the back one when it touches nothing) are classified as
circle, square or triangle from their component statistics: the centroid of an apex-up triangle
sits below the centre of its bounding box, and a square fills its box while a circle does not.
The thresholds are fitted on the world's own shape masks (:func:`fit_shape_thresholds`); the
counts per (prompted, classified) shape are kept (:meth:`VideoObjectStats.confusion`), and so is
how many box edges of the classified objects lie on a ``grid_px`` grid, which shows a model that
paints its patches whole. Objects are tracked by colour; the centroid displacement gives the motion
statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from sfpp.world.grammar import COLOURS, PALETTE, SHAPES, parse_prompt
from sfpp.world.scene import DEFAULT_WORLD, WorldSpec, shape_mask

__all__ = [
    "ShapeThresholds",
    "VideoObjectStats",
    "WorldObjectScore",
    "classify_shape",
    "fit_shape_thresholds",
    "label_colours",
    "score_videos",
]

_PALETTE_RGB = np.asarray([PALETTE[name] for name in COLOURS], dtype=np.float32)  # (K, 3)
_DILATE_KERNEL = np.ones((3, 3), dtype=np.uint8)


# -- shape classification ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeThresholds:
    """Decision thresholds of :func:`classify_shape`.

    Args:
        triangle_offset: A component whose centroid lies more than this fraction of its height
            below its bounding-box centre is a triangle.
        square_fill: Otherwise, a component filling more than this fraction of its box is a
            square, and a circle if not.
    """

    triangle_offset: float
    square_fill: float


def _shape_features(
    area: float, top: float, height: float, width: float, centroid_y: float
) -> tuple[float, float]:
    """``(fill, offset)``: box fill ratio and centroid offset below the box centre (in heights)."""
    fill = area / (width * height)
    offset = (centroid_y - (top + (height - 1) / 2.0)) / height
    return fill, offset


def _mask_features(mask: np.ndarray) -> tuple[float, float]:
    """Shape features of a binary mask, computed the way components are measured."""
    rows, cols = np.nonzero(mask)
    top, height = rows.min(), rows.max() - rows.min() + 1
    width = cols.max() - cols.min() + 1
    return _shape_features(float(rows.size), float(top), float(height), float(width), float(rows.mean()))


def fit_shape_thresholds(min_size: int, max_size: int) -> ShapeThresholds:
    """Fit the thresholds midway between the world's own shape masks of every size.

    Args:
        min_size: Smallest rendered object side.
        max_size: Largest rendered object side.

    Returns:
        Thresholds that classify every rendered mask of these sizes correctly.

    Raises:
        ValueError: If the shapes of these sizes cannot be told apart by the two features.
    """
    features = {
        shape: [_mask_features(shape_mask(shape, size)) for size in range(min_size, max_size + 1)]
        for shape in SHAPES
    }
    lowest_triangle = min(offset for _, offset in features["triangle"])
    highest_other = max(offset for shape in ("circle", "square") for _, offset in features[shape])
    lowest_square = min(fill for fill, _ in features["square"])
    highest_circle = max(fill for fill, _ in features["circle"])
    if lowest_triangle <= highest_other or lowest_square <= highest_circle:
        raise ValueError(
            f"the shape masks of sizes {min_size}..{max_size} (world min_size..max_size) overlap in "
            f"fill ratio or centroid offset, so no thresholds separate them; change the size range"
        )
    return ShapeThresholds(
        triangle_offset=(lowest_triangle + highest_other) / 2.0,
        square_fill=(lowest_square + highest_circle) / 2.0,
    )


def classify_shape(
    area: float, top: float, height: float, width: float, centroid_y: float, thresholds: ShapeThresholds
) -> str:
    """Classify one component from its area, bounding box and centroid row.

    Returns:
        ``"triangle"``, ``"square"`` or ``"circle"``.
    """
    fill, offset = _shape_features(area, top, height, width, centroid_y)
    if offset > thresholds.triangle_offset:
        return "triangle"
    return "square" if fill > thresholds.square_fill else "circle"


# -- colour labelling ----------------------------------------------------------------------------


def label_colours(frames: np.ndarray, colour_threshold: float) -> np.ndarray:
    """Label each pixel with its nearest palette colour, or ``-1`` (background) if none is close.

    Args:
        frames: RGB pixels ``(..., 3)`` in ``[-1, 1]``.
        colour_threshold: Largest RGB distance to a palette colour that still counts as that colour.

    Returns:
        Int8 labels of shape ``frames.shape[:-1]``: the index in :data:`~sfpp.world.grammar.COLOURS`
        or ``-1``.
    """
    distances = np.square(frames[..., None, :] - _PALETTE_RGB).sum(axis=-1)  # (..., K)
    nearest = distances.argmin(axis=-1)
    close = np.take_along_axis(distances, nearest[..., None], axis=-1)[..., 0] <= colour_threshold**2
    return np.where(close, nearest, -1).astype(np.int8)


# -- per-frame object detection ------------------------------------------------------------------


@dataclass
class _Component:
    """A detected object in one frame: its pixels, area, centroid and shape statistics."""

    mask: np.ndarray  # (H, W) bool
    area: int
    centroid: tuple[float, float]  # (x, y)
    top: int
    left: int
    height: int
    width: int


@dataclass
class _FrameObject:
    """What one frame shows of one prompted object."""

    present: bool = False  # any pixel of its colour attributed to it
    plausible: bool = False  # its visible area is consistent with the world
    touching_front: bool = False  # (back object) its pixels touch the front object
    shape: str | None = None
    box: tuple[int, int, int, int] | None = None  # (top, left, height, width) of a classified object
    centroid: tuple[float, float] | None = None
    area: int = 0


def _largest_component(colour_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Connected components of a colour; returns labels, stats, centroids and the largest's id (0 if none)."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(colour_mask, connectivity=8)
    if count <= 1:
        return labels, stats, centroids, 0
    return labels, stats, centroids, 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _component(labels: np.ndarray, stats: np.ndarray, centroids: np.ndarray, index: int) -> _Component:
    """Gather one component's statistics."""
    return _Component(
        mask=labels == index,
        area=int(stats[index, cv2.CC_STAT_AREA]),
        centroid=(float(centroids[index, 0]), float(centroids[index, 1])),
        top=int(stats[index, cv2.CC_STAT_TOP]),
        left=int(stats[index, cv2.CC_STAT_LEFT]),
        height=int(stats[index, cv2.CC_STAT_HEIGHT]),
        width=int(stats[index, cv2.CC_STAT_WIDTH]),
    )


# -- results -------------------------------------------------------------------------------------


@dataclass
class VideoObjectStats:
    """Counts behind the scores of one or more videos; add them up to aggregate.

    Attributes:
        num_frames: Frames scored.
        clean_frames: Frames where every prompted object is present, plausible and nothing else is.
        object_frames: Prompted objects times frames.
        detected_objects: Object-frames where the object was found with a plausible size (or
            consistently hidden behind the front object).
        classified_objects: Object-frames where a whole object's shape was classified.
        correct_shapes: Of those, how many had the prompted shape.
        shape_confusion: Of those, counts per ``(prompted shape, classified shape)``.
        box_edges: Bounding-box edges of the classified objects (four per object).
        grid_edges: Of those, edges on a line of the ``grid_px`` grid (a pixel row or column
            that is a multiple of ``grid_px``, counting both sides of the box).
        motion_steps: Consecutive frame pairs where an object was tracked in both frames.
        motion_px: Sum of the centroid displacements over those steps.
        jump_steps: Steps longer than the jump threshold.
        lag_pairs: Frame pairs ``(t, t + lag)`` with at least one object tracked in both.
        frozen_pairs: Of those, pairs where no tracked object moved more than the frozen threshold.
        clean_per_frame: Whether each frame (videos concatenated in order) is clean.
    """

    num_frames: int = 0
    clean_frames: int = 0
    object_frames: int = 0
    detected_objects: int = 0
    classified_objects: int = 0
    correct_shapes: int = 0
    shape_confusion: dict[tuple[str, str], int] = field(default_factory=dict)
    box_edges: int = 0
    grid_edges: int = 0
    motion_steps: int = 0
    motion_px: float = 0.0
    jump_steps: int = 0
    lag_pairs: int = 0
    frozen_pairs: int = 0
    clean_per_frame: list[bool] = field(default_factory=list)

    def __add__(self, other: VideoObjectStats) -> VideoObjectStats:
        return VideoObjectStats(
            num_frames=self.num_frames + other.num_frames,
            clean_frames=self.clean_frames + other.clean_frames,
            object_frames=self.object_frames + other.object_frames,
            detected_objects=self.detected_objects + other.detected_objects,
            classified_objects=self.classified_objects + other.classified_objects,
            correct_shapes=self.correct_shapes + other.correct_shapes,
            shape_confusion={
                pair: self.shape_confusion.get(pair, 0) + other.shape_confusion.get(pair, 0)
                for pair in self.shape_confusion.keys() | other.shape_confusion.keys()
            },
            box_edges=self.box_edges + other.box_edges,
            grid_edges=self.grid_edges + other.grid_edges,
            motion_steps=self.motion_steps + other.motion_steps,
            motion_px=self.motion_px + other.motion_px,
            jump_steps=self.jump_steps + other.jump_steps,
            lag_pairs=self.lag_pairs + other.lag_pairs,
            frozen_pairs=self.frozen_pairs + other.frozen_pairs,
            clean_per_frame=self.clean_per_frame + other.clean_per_frame,
        )

    def scores(self) -> dict[str, float]:
        """The scores; a ratio with nothing to count (e.g. no object ever tracked) is NaN.

        Returns:
            ``clean_frame_fraction``, ``detected_fraction``, ``shape_accuracy``,
            ``grid_aligned_fraction`` (of the classified objects' box edges, the fraction on the
            ``grid_px`` grid: about ``1 / grid_px`` for objects placed anywhere, near 1 for objects
            snapped to a model's patch grid), ``mean_motion_px`` (pixels per frame),
            ``jump_fraction`` and ``frozen_fraction``.
        """

        def ratio(numerator: float, denominator: int) -> float:
            return float(numerator) / denominator if denominator else float("nan")

        return {
            "clean_frame_fraction": ratio(self.clean_frames, self.num_frames),
            "detected_fraction": ratio(self.detected_objects, self.object_frames),
            "shape_accuracy": ratio(self.correct_shapes, self.classified_objects),
            "grid_aligned_fraction": ratio(self.grid_edges, self.box_edges),
            "mean_motion_px": ratio(self.motion_px, self.motion_steps),
            "jump_fraction": ratio(self.jump_steps, self.motion_steps),
            "frozen_fraction": ratio(self.frozen_pairs, self.lag_pairs),
        }

    def confusion(self) -> dict[str, dict[str, int]]:
        """Classified shapes per prompted shape: ``{prompted: {classified: object-frames}}``, all of :data:`SHAPES`."""
        return {
            prompted: {found: self.shape_confusion.get((prompted, found), 0) for found in SHAPES}
            for prompted in SHAPES
        }


# -- the score -----------------------------------------------------------------------------------


class WorldObjectScore:
    """Scores generated videos of the world against their prompts (see the module docstring).

    Call it as ``score(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict[str, float]``.

    Args:
        world: The world the videos should show (object sizes).
        colour_threshold: Largest RGB distance (``[-1, 1]`` units) from a palette colour for a
            pixel to count as that colour; palette colours are 2 apart.
        size_tolerance: Relative slack around the areas the world renders for a shape.
        max_stray_pixels: Coloured pixels outside the objects that a clean frame may have.
        jump_threshold_px: A centroid step longer than this is a jump (the world moves at most
            ``max_speed`` plus rounding, about 1.4 px per frame).
        frozen_lag: Frames between the two frames of a frozen-motion pair (clipped to ``F - 1``);
            long enough that the slowest object moves a whole pixel despite rounding.
        frozen_threshold_px: A pair is frozen when no tracked object moved more than this.
        grid_px: Grid of ``grid_aligned_fraction``: the patch side, in pixels, of the model whose
            videos are scored (the ``toy`` flavour's 4). A model that renders objects a patch at a
            time puts their edges on this grid.

    Raises:
        ValueError: For impossible settings, naming the setting.
    """

    def __init__(
        self,
        world: WorldSpec = DEFAULT_WORLD,
        colour_threshold: float = 0.5,
        size_tolerance: float = 0.2,
        max_stray_pixels: int = 2,
        jump_threshold_px: float = 2.0,
        frozen_lag: int = 4,
        frozen_threshold_px: float = 0.5,
        grid_px: int = 4,
    ) -> None:
        if not 0.0 < colour_threshold < 1.0:
            raise ValueError(
                f"colour_threshold must be in (0, 1) (palette colours are 2 apart), got {colour_threshold}"
            )
        if not 0.0 <= size_tolerance < 1.0:
            raise ValueError(f"size_tolerance must be in [0, 1), got {size_tolerance}")
        if max_stray_pixels < 0:
            raise ValueError(f"max_stray_pixels must be >= 0, got {max_stray_pixels}")
        if frozen_lag < 1:
            raise ValueError(f"frozen_lag must be >= 1, got {frozen_lag}")
        if grid_px < 2:
            raise ValueError(f"grid_px must be >= 2 (every edge is on a 1-px grid), got {grid_px}")
        self.grid_px = grid_px
        self.world = world
        self.colour_threshold = colour_threshold
        self.max_stray_pixels = max_stray_pixels
        self.jump_threshold_px = jump_threshold_px
        self.frozen_lag = frozen_lag
        self.frozen_threshold_px = frozen_threshold_px
        self.shape_thresholds = fit_shape_thresholds(world.min_size, world.max_size)
        self.area_ranges: dict[str, tuple[float, float]] = {}
        for shape in SHAPES:
            areas = [int(shape_mask(shape, s).sum()) for s in range(world.min_size, world.max_size + 1)]
            self.area_ranges[shape] = (min(areas) * (1 - size_tolerance), max(areas) * (1 + size_tolerance))

    def __call__(self, videos: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
        """Aggregate scores of a batch of videos (see :meth:`VideoObjectStats.scores`)."""
        return self.batch_stats(videos, prompts).scores()

    def score_video(self, video: torch.Tensor | np.ndarray, prompt: str) -> dict[str, float]:
        """Scores of one video ``(3, F, H, W)`` in ``[-1, 1]``."""
        return self.video_stats(video[None], [prompt])[0].scores()

    def batch_stats(self, videos: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> VideoObjectStats:
        """Summed counts of a batch ``(B, 3, F, H, W)`` of videos with one prompt each."""
        per_video = self.video_stats(videos, prompts)
        total = VideoObjectStats()
        for stats in per_video:
            total = total + stats
        return total

    def video_stats(
        self, videos: torch.Tensor | np.ndarray, prompts: Sequence[str]
    ) -> list[VideoObjectStats]:
        """Counts of every video of a batch ``(B, 3, F, H, W)``, in order.

        Raises:
            ValueError: For a wrong layout or a prompt count that differs from the batch size.
        """
        array = (
            videos.detach().float().cpu().numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos)
        )
        if array.ndim != 5 or array.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, F, H, W) RGB in [-1, 1], got shape {tuple(array.shape)}")
        if isinstance(prompts, str) or len(prompts) != array.shape[0]:
            raise ValueError(f"need one prompt per video: {array.shape[0]} videos, prompts={prompts!r}")
        pixels = np.ascontiguousarray(array.transpose(0, 2, 3, 4, 1), dtype=np.float32)  # (B, F, H, W, 3)
        labels = label_colours(pixels, self.colour_threshold)  # (B, F, H, W)
        return [
            self._score_video(video_labels, prompt)
            for video_labels, prompt in zip(labels, prompts, strict=True)
        ]

    # -- one video -------------------------------------------------------------------------------

    def _score_video(self, labels: np.ndarray, prompt: str) -> VideoObjectStats:
        """Score one video's colour labels ``(F, H, W)`` against its prompt."""
        content = parse_prompt(prompt)
        targets = [(COLOURS.index(colour), shape) for colour, shape in content.objects]
        frames = [self._detect_frame(frame_labels, targets) for frame_labels in labels]
        objects = [found for found, _ in frames]  # F x objects
        strays = [stray for _, stray in frames]
        if len(targets) == 2:
            self._allow_hidden_back_object(objects)
        clean = [
            all(obj.plausible for obj in frame) and stray <= self.max_stray_pixels
            for frame, stray in zip(objects, strays, strict=True)
        ]
        stats = VideoObjectStats(
            num_frames=len(frames),
            clean_frames=sum(clean),
            object_frames=len(frames) * len(targets),
            detected_objects=sum(obj.plausible for frame in objects for obj in frame),
            clean_per_frame=clean,
        )
        for frame in objects:
            for obj, (_, shape) in zip(frame, targets, strict=True):
                if obj.shape is not None and obj.box is not None:
                    stats.classified_objects += 1
                    stats.correct_shapes += obj.shape == shape
                    pair = (shape, obj.shape)
                    stats.shape_confusion[pair] = stats.shape_confusion.get(pair, 0) + 1
                    top, left, height, width = obj.box
                    stats.box_edges += 4
                    stats.grid_edges += sum(
                        line % self.grid_px == 0 for line in (top, top + height, left, left + width)
                    )
        self._add_motion(stats, objects)
        return stats

    def _detect_frame(
        self, labels: np.ndarray, targets: list[tuple[int, str]]
    ) -> tuple[list[_FrameObject], int]:
        """Find the prompted objects (front first) in one frame's labels ``(H, W)``.

        Returns:
            One :class:`_FrameObject` per target and the number of stray coloured pixels.
        """
        found: list[_FrameObject] = []
        front: _Component | None = None
        attributed = 0
        for order, (colour, shape) in enumerate(targets):
            low, high = self.area_ranges[shape]
            colour_mask = (labels == colour).astype(np.uint8)
            components, stats, centroids, largest = _largest_component(colour_mask)
            obj = _FrameObject()
            if largest:
                biggest = _component(components, stats, centroids, largest)
                touching = self._touching_ids(components, front) if order > 0 else []
                if touching:
                    # Occluded back object: every piece touching the front object is part of it.
                    obj.area = int(sum(stats[i, cv2.CC_STAT_AREA] for i in touching))
                    obj.present, obj.touching_front = True, True
                    # Visible union consistent: the back object fits in its visible pieces plus
                    # the front object, and shows no more than a whole object.
                    obj.plausible = front is not None and obj.area <= high and obj.area + front.area >= low
                else:
                    obj.area, obj.centroid = biggest.area, biggest.centroid
                    obj.present = True
                    obj.plausible = low <= biggest.area <= high
                    if obj.plausible:
                        obj.shape = classify_shape(
                            biggest.area,
                            biggest.top,
                            biggest.height,
                            biggest.width,
                            biggest.centroid[1],
                            self.shape_thresholds,
                        )
                        obj.box = (biggest.top, biggest.left, biggest.height, biggest.width)
                if order == 0 and obj.plausible:
                    front = biggest
                attributed += obj.area
            found.append(obj)
        return found, int((labels >= 0).sum()) - attributed

    @staticmethod
    def _touching_ids(components: np.ndarray, front: _Component | None) -> list[int]:
        """Component ids (of the back colour) that touch the front object's pixels (8-neighbourhood)."""
        if front is None:
            return []
        halo = cv2.dilate(front.mask.astype(np.uint8), _DILATE_KERNEL) > 0
        return [int(i) for i in np.unique(components[halo]) if i > 0]

    @staticmethod
    def _allow_hidden_back_object(objects: list[list[_FrameObject]]) -> None:
        """Accept a back object that vanished behind the front one.

        A frame whose back object has no pixel at all, but whose front object is plausible, counts
        the back object as detected when the nearest frames where it is visible (before and after,
        whichever exist, at least one) show it touching the front object.
        """
        visible = [t for t, frame in enumerate(objects) if frame[1].present]
        for t, (front, back) in enumerate(objects):
            if back.present or not front.plausible or not visible:
                continue
            before = [s for s in visible if s < t]
            after = [s for s in visible if s > t]
            neighbours = ([before[-1]] if before else []) + ([after[0]] if after else [])
            if all(objects[s][1].touching_front and objects[s][1].plausible for s in neighbours):
                back.plausible = True

    def _add_motion(self, stats: VideoObjectStats, objects: list[list[_FrameObject]]) -> None:
        """Accumulate centroid motion, jumps and frozen pairs of the objects tracked by colour."""
        num_frames = len(objects)
        num_objects = len(objects[0]) if objects else 0
        centroids = np.full((num_frames, num_objects, 2), np.nan)  # (F, N, 2)
        for t, frame in enumerate(objects):
            for n, obj in enumerate(frame):
                if obj.centroid is not None:
                    centroids[t, n] = obj.centroid
        if num_frames < 2:
            return
        steps = np.linalg.norm(centroids[1:] - centroids[:-1], axis=-1)  # (F - 1, N), NaN if untracked
        tracked = ~np.isnan(steps)
        stats.motion_steps += int(tracked.sum())
        stats.motion_px += float(steps[tracked].sum())
        stats.jump_steps += int((steps[tracked] > self.jump_threshold_px).sum())
        lag = min(self.frozen_lag, num_frames - 1)
        moves = np.linalg.norm(centroids[lag:] - centroids[:-lag], axis=-1)  # (F - lag, N)
        for pair in moves:
            pair = pair[~np.isnan(pair)]
            if pair.size:
                stats.lag_pairs += 1
                stats.frozen_pairs += bool((pair <= self.frozen_threshold_px).all())


@functools.lru_cache(maxsize=1)
def _default_score() -> WorldObjectScore:
    """The shared default scorer (its shape thresholds are fitted once)."""
    return WorldObjectScore()


def score_videos(videos: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Score a batch ``(B, 3, F, H, W)`` in ``[-1, 1]`` with the default :class:`WorldObjectScore`.

    Returns:
        ``clean_frame_fraction``, ``detected_fraction``, ``shape_accuracy``, ``mean_motion_px``,
        ``jump_fraction`` and ``frozen_fraction`` (NaN when there is nothing to count).
    """
    return _default_score()(videos, prompts)
