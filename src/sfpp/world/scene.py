"""The built-in procedural world: coloured shapes bouncing on a dark background.

Every video of the world is a pure function of a :class:`VideoSpec`: one or two objects, each a
circle, square or triangle in one of six saturated palette colours, moving with a constant velocity
and bouncing off the walls, in front of a plain dark background or a dark background whose colour
drifts slowly. Positions are an analytic function of time (a triangle wave per axis), so any window
of any video can be rendered directly: ``render(spec, 8, start_frame=992)`` equals the last eight
frames of ``render(spec, 1000)``. Shapes are crisp binary masks placed at rounded positions, so an
object keeps its exact form while it moves and can be found exactly by its colour. Prompts and
their grammar are in :mod:`sfpp.world.grammar`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sfpp.world.grammar import BACKGROUNDS, COLOURS, PALETTE, SHAPES, all_prompts, format_prompt, parse_prompt

__all__ = [
    "DEFAULT_WORLD",
    "BackgroundSpec",
    "ObjectSpec",
    "VideoSpec",
    "WorldSpec",
    "background_colours",
    "frame_layout",
    "object_pixel_positions",
    "object_positions",
    "prompt_of",
    "render",
    "sample_spec",
    "shape_mask",
    "spec_from_prompt",
]

# Background colour ranges (per channel, in [-1, 1]): dark enough that a palette colour is never
# closer than ~1.5 to the background in RGB distance.
DARK_LEVEL_RANGE: tuple[float, float] = (-0.95, -0.75)
CHANGING_BASE_RANGE: tuple[float, float] = (-0.8, -0.75)
CHANGING_AMPLITUDE_RANGE: tuple[float, float] = (0.1, 0.15)
CHANGING_PERIOD_RANGE: tuple[float, float] = (32.0, 64.0)


@functools.cache
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Binary mask of a shape on a ``size x size`` pixel grid.

    Square: every pixel. Circle: pixel centres within ``size / 2 - 0.25`` of the centre (an
    octagon-like disc whose corners are clearly cut). Triangle: apex up, row ``i`` covers the
    pixels whose centre is within ``(i + 1) / 2`` of the vertical axis.

    Args:
        shape: One of :data:`SHAPES`.
        size: Side of the bounding box in pixels, at least 3.

    Returns:
        A read-only bool array of shape ``(size, size)``.

    Raises:
        ValueError: For an unknown shape or a size below 3.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; the world's shapes are {SHAPES}")
    if size < 3:
        raise ValueError(f"shape size must be >= 3 px, got {size}")
    offsets = np.arange(size) + 0.5 - size / 2.0  # pixel centres relative to the box centre
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":
        radius = size / 2.0 - 0.25
        mask = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2
    else:
        rows = np.arange(size)
        mask = np.abs(offsets)[None, :] <= (rows[:, None] + 1) / 2.0
    mask.setflags(write=False)
    return mask


# -- specifications ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """Settings shared by every video of a world.

    Args:
        frame_size: Height and width of a frame in pixels.
        max_objects: Largest number of objects per video (1 or 2).
        min_size: Smallest object side in pixels.
        max_size: Largest object side in pixels.
        min_speed: Slowest object speed in pixels per frame.
        max_speed: Fastest object speed in pixels per frame.

    Raises:
        ValueError: For settings the world cannot render, naming the setting to change.
    """

    frame_size: int = 16
    max_objects: int = 2
    min_size: int = 5
    max_size: int = 7
    min_speed: float = 0.25
    max_speed: float = 0.75

    def __post_init__(self) -> None:
        if self.max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2 (the prompt grammar), got {self.max_objects}")
        if not 3 <= self.min_size <= self.max_size:
            raise ValueError(
                f"need 3 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}"
            )
        if self.frame_size < self.max_size + 2:
            raise ValueError(
                f"frame_size={self.frame_size} leaves objects of max_size={self.max_size} no room to "
                f"move; use frame_size >= max_size + 2"
            )
        if not 0.0 < self.min_speed <= self.max_speed:
            raise ValueError(
                f"need 0 < min_speed <= max_speed, got min_speed={self.min_speed}, max_speed={self.max_speed}"
            )


DEFAULT_WORLD = WorldSpec()


@dataclass(frozen=True)
class ObjectSpec:
    """One moving object.

    Args:
        shape: One of :data:`SHAPES`.
        colour: One of :data:`COLOURS`.
        size: Side of the shape's bounding box in pixels.
        position: ``(x, y)`` of the box's top-left corner at frame 0, in ``[0, frame_size - size]``.
        velocity: ``(vx, vy)`` in pixels per frame.
    """

    shape: str
    colour: str
    size: int
    position: tuple[float, float]
    velocity: tuple[float, float]


@dataclass(frozen=True)
class BackgroundSpec:
    """The background colour over time: ``base + amplitude * sin(2 pi t / period_frames + phase)``.

    Args:
        kind: ``"dark"`` (constant, amplitude zero) or ``"changing"`` (slow drift).
        base: Mean RGB colour in ``[-1, 1]``.
        amplitude: Per-channel drift amplitude.
        period_frames: Period of the drift in frames.
        phase: Per-channel phase in radians.
    """

    kind: str
    base: tuple[float, float, float]
    amplitude: tuple[float, float, float] = (0.0, 0.0, 0.0)
    period_frames: float = 64.0
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video of any length.

    Args:
        objects: One or two objects; the first is drawn in front.
        background: The background.
        frame_size: Height and width of a frame in pixels.

    Raises:
        ValueError: For unknown shapes, colours or backgrounds, repeated colours, or objects that do
            not fit in the frame.
    """

    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    frame_size: int = 16

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a video has 1 or 2 objects, got {len(self.objects)}")
        colours = [obj.colour for obj in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"objects of one video need distinct colours, got {colours}")
        if self.background.kind not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background.kind!r}; choose one of {BACKGROUNDS}")
        for obj in self.objects:
            if obj.colour not in PALETTE:
                raise ValueError(f"unknown colour {obj.colour!r}; the palette is {COLOURS}")
            shape_mask(obj.shape, obj.size)  # validates shape and size
            limit = self.frame_size - obj.size
            if limit < 1:
                raise ValueError(
                    f"object of size {obj.size} does not fit a frame_size={self.frame_size} frame"
                )
            if not all(0.0 <= p <= limit for p in obj.position):
                raise ValueError(f"object position {obj.position} outside [0, {limit}] for size {obj.size}")


# -- motion and rendering ------------------------------------------------------------------------


def object_positions(obj: ObjectSpec, frame_size: int, frames: np.ndarray) -> np.ndarray:
    """Continuous top-left positions of an object at the given frame indices.

    Motion is linear in an unfolded coordinate and folded back into ``[0, L]`` with
    ``L = frame_size - size`` by a triangle wave, which is exactly a reflection at each wall.

    Args:
        obj: The object.
        frame_size: Frame side in pixels.
        frames: Frame indices, any shape ``S``.

    Returns:
        Float64 positions of shape ``S + (2,)`` as ``(x, y)``.
    """
    limit = float(frame_size - obj.size)
    times = np.asarray(frames, dtype=np.float64)[..., None]  # S + (1,)
    unfolded = np.asarray(obj.position) + np.asarray(obj.velocity) * times  # S + (2,)
    return limit - np.abs(np.mod(unfolded, 2.0 * limit) - limit)


def object_pixel_positions(obj: ObjectSpec, frame_size: int, frames: np.ndarray) -> np.ndarray:
    """Integer top-left pixel positions (half-up rounding of :func:`object_positions`).

    Returns:
        Int64 array of shape ``S + (2,)`` as ``(x, y)``, each in ``[0, frame_size - size]``.
    """
    return np.floor(object_positions(obj, frame_size, frames) + 0.5).astype(np.int64)


def background_colours(background: BackgroundSpec, frames: np.ndarray) -> np.ndarray:
    """Background RGB colour at the given frame indices.

    Returns:
        Float64 array of shape ``(len(frames), 3)``.
    """
    times = np.asarray(frames, dtype=np.float64)[:, None]  # (F, 1)
    angle = 2.0 * math.pi * times / background.period_frames + np.asarray(background.phase)  # (F, 3)
    colours = np.asarray(background.base) + np.asarray(background.amplitude) * np.sin(angle)
    return np.clip(colours, -1.0, 1.0)


def render(spec: VideoSpec, num_frames: int, start_frame: int = 0) -> np.ndarray:
    """Render frames ``[start_frame, start_frame + num_frames)`` of a video.

    Args:
        spec: The video.
        num_frames: Number of frames to render.
        start_frame: Index of the first frame; any window equals the same slice of a longer render.

    Returns:
        Float32 array of shape ``(3, num_frames, frame_size, frame_size)`` in ``[-1, 1]``.

    Raises:
        ValueError: If ``num_frames < 1`` or ``start_frame < 0``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    size = spec.frame_size
    frames = np.arange(start_frame, start_frame + num_frames)
    video = np.empty((num_frames, size, size, 3), dtype=np.float32)  # (F, H, W, C)
    video[:] = background_colours(spec.background, frames)[:, None, None, :]
    for obj in reversed(spec.objects):  # back to front: the first object ends up on top
        mask = shape_mask(obj.shape, obj.size)
        colour = np.asarray(PALETTE[obj.colour], dtype=np.float32)
        pixels = object_pixel_positions(obj, size, frames)  # (F, 2)
        for index, (x, y) in enumerate(pixels.tolist()):
            video[index, y : y + obj.size, x : x + obj.size][mask] = colour
    return np.ascontiguousarray(video.transpose(3, 0, 1, 2))  # (C, F, H, W)


def frame_layout(spec: VideoSpec, frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What one frame of a video is made of: its objects' placements and its background colour.

    Rendering the objects' masks at these placements over the background, back to front, gives
    exactly ``render(spec, 1, frame)``.

    Args:
        spec: The video.
        frame: Frame index.

    Returns:
        ``(objects, background)``: ``objects`` is an int64 array ``(2, 5)`` with one row
        ``[colour index, shape index, size, x, y]`` per object, front first (indices into
        :data:`COLOURS` and :data:`SHAPES`; ``x, y`` the integer top-left pixel), and a row of -1
        where a video has one object; ``background`` is the float32 RGB ``(3,)`` of the frame.

    Raises:
        ValueError: For a negative frame index.
    """
    if frame < 0:
        raise ValueError(f"frame must be >= 0, got {frame}")
    objects = np.full((2, 5), -1, dtype=np.int64)
    for row, obj in enumerate(spec.objects):
        x, y = object_pixel_positions(obj, spec.frame_size, np.array(frame)).tolist()
        objects[row] = (COLOURS.index(obj.colour), SHAPES.index(obj.shape), obj.size, x, y)
    background = background_colours(spec.background, np.array([frame]))[0].astype(np.float32)
    return objects, background


def prompt_of(spec: VideoSpec) -> str:
    """The prompt describing a video, e.g. ``"a red circle bouncing on a dark background"``."""
    return format_prompt([(obj.colour, obj.shape) for obj in spec.objects], spec.background.kind)


# -- sampling ------------------------------------------------------------------------------------


def _sample_background(kind: str, rng: np.random.Generator) -> BackgroundSpec:
    """Draw a background of the given kind."""
    if kind == "dark":
        level = rng.uniform(*DARK_LEVEL_RANGE, size=3)
        return BackgroundSpec(kind="dark", base=tuple(float(v) for v in level))
    base = rng.uniform(*CHANGING_BASE_RANGE, size=3)
    amplitude = rng.uniform(*CHANGING_AMPLITUDE_RANGE, size=3)
    period = rng.uniform(*CHANGING_PERIOD_RANGE)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=3)
    return BackgroundSpec(
        kind="changing",
        base=tuple(float(v) for v in base),
        amplitude=tuple(float(v) for v in amplitude),
        period_frames=float(period),
        phase=tuple(float(v) for v in phase),
    )


def _sample_object(colour: str, shape: str, world: WorldSpec, rng: np.random.Generator) -> ObjectSpec:
    """Draw size, start position and velocity of one object."""
    size = int(rng.integers(world.min_size, world.max_size + 1))
    position = rng.uniform(0.0, world.frame_size - size, size=2)
    speed = rng.uniform(world.min_speed, world.max_speed)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return ObjectSpec(
        shape=shape,
        colour=colour,
        size=size,
        position=(float(position[0]), float(position[1])),
        velocity=(float(speed * math.cos(angle)), float(speed * math.sin(angle))),
    )


def spec_from_prompt(prompt: str, seed: int, world: WorldSpec = DEFAULT_WORLD) -> VideoSpec:
    """A random video matching a prompt (sizes, positions, velocities and background drawn from ``seed``).

    Args:
        prompt: A prompt of the grammar.
        seed: Seed of the draw; the same prompt and seed give the same video.
        world: World settings.

    Returns:
        The video's spec; ``prompt_of`` of it gives back the normalised prompt.

    Raises:
        ValueError: If the prompt is outside the grammar or names more objects than
            ``world.max_objects``.
    """
    content = parse_prompt(prompt)
    if len(content.objects) > world.max_objects:
        raise ValueError(
            f"prompt {prompt!r} names {len(content.objects)} objects but max_objects={world.max_objects}"
        )
    rng = np.random.default_rng(seed)
    objects = tuple(_sample_object(colour, shape, world, rng) for colour, shape in content.objects)
    background = _sample_background(content.background, rng)
    return VideoSpec(objects=objects, background=background, frame_size=world.frame_size)


@functools.lru_cache(maxsize=16)
def _group_by_object_count(prompts: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Prompts grouped by their number of objects, in increasing count order."""
    by_count: dict[int, list[str]] = {}
    for prompt in prompts:
        by_count.setdefault(len(parse_prompt(prompt).objects), []).append(prompt)
    return tuple(tuple(by_count[count]) for count in sorted(by_count))


def sample_spec(
    seed: int, world: WorldSpec = DEFAULT_WORLD, prompts: Sequence[str] | None = None
) -> VideoSpec:
    """A random video of the world.

    The number of objects is uniform over the counts present in ``prompts``; the prompt is then
    uniform among those with that count, so one-object videos are not drowned by the many
    two-object prompts.

    Args:
        seed: Seed of the draw.
        world: World settings.
        prompts: Prompts to draw from (default: every prompt of the world, see :func:`all_prompts`).

    Returns:
        The video's spec.

    Raises:
        ValueError: If ``prompts`` is empty.
    """
    candidates = all_prompts(world.max_objects) if prompts is None else tuple(prompts)
    if not candidates:
        raise ValueError("sample_spec needs at least one prompt to draw from")
    groups = _group_by_object_count(candidates)
    rng = np.random.default_rng(seed)
    group = groups[int(rng.integers(len(groups)))]
    prompt = group[int(rng.integers(len(group)))]
    return spec_from_prompt(prompt, int(rng.integers(2**63 - 1)), world)
