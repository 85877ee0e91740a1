"""Video lengths: the single place where seconds, pixel frames, latent frames and chunks convert.

Conventions (Wan2.1, shared by :mod:`sfpp.codecs`):

* A codec with temporal stride ``s`` encodes the first pixel frame alone and every later group of
  ``s`` frames into one latent frame, so ``n = 1 + s * (L - 1)`` pixel frames <-> ``L`` latent
  frames (``n = L`` for a pixel codec, ``s = 1``).
* A video of ``n`` frames at ``fps`` lasts ``(n - 1) / fps`` seconds (the span from the first to the
  last frame): 81 frames at 16 fps are exactly 5 s, 1601 frames 100 s.
* Generation runs in chunks of ``num_frames_per_chunk`` latent frames, so a length given in seconds
  becomes a whole number of chunks, with an explicit rounding rule.

Golden numbers at the defaults (16 fps, stride 4, chunks of 3): 5 s = 81 frames = 21 latent frames =
7 chunks; 100 s = 1601 frames = 401 latent frames, 133.67 chunks: 399 latent frames rounding down,
402 rounding up.

Seconds are converted with exact rational arithmetic (a float ``seconds`` or ``fps`` is read as the
decimal it prints as), so ``"100s"`` never lands one frame off through floating-point error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = ["Rounding", "VideoTiming", "parse_length"]

Rounding = Literal["down", "up", "nearest", "exact"]
"""How a length in seconds becomes whole chunks."""

_ROUNDINGS: tuple[str, ...] = ("down", "up", "nearest", "exact")
_SECONDS = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*s\s*$")
_INTEGER = re.compile(r"^\s*\d+\s*$")


def _check_positive_int(value: object, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 ({hint}), got {value!r}")
    return value


def _exact(value: float | int | Fraction, name: str) -> Fraction:
    """Exact rational value of a finite number (a float is read as the decimal it prints as)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return Fraction(repr(value))
    return Fraction(value)


@dataclass(frozen=True)
class VideoTiming:
    """Frame rate, codec stride and chunk size, and every length conversion between them.

    Args:
        fps: Pixel frames per second of the decoded video (Wan2.1: 16).
        temporal_stride: Pixel frames per latent frame after the first (Wan VAE: 4, pixel codec: 1).
        num_frames_per_chunk: Latent frames generated per chunk (Self-Forcing: 3).

    Raises:
        ValueError: If ``fps`` is not a finite positive number or a count is not a positive integer.
    """

    fps: float = 16.0
    temporal_stride: int = 4
    num_frames_per_chunk: int = 3

    def __post_init__(self) -> None:
        fps = self.fps
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0 (Wan2.1: 16), got {fps!r}")
        _check_positive_int(self.temporal_stride, "temporal_stride", "Wan VAE: 4, pixel codec: 1")
        _check_positive_int(self.num_frames_per_chunk, "num_frames_per_chunk", "Self-Forcing: 3")

    # ------------------------------------------------------------------ frames <-> latent frames

    def latent_frames_from_frames(self, num_frames: int) -> int:
        """Latent frames of a video of ``num_frames`` pixel frames: ``1 + (n - 1) / stride``.

        Args:
            num_frames: Pixel frames, ``1 + temporal_stride * k`` for some ``k >= 0``.

        Returns:
            The number of latent frames ``L``.

        Raises:
            ValueError: If ``num_frames`` is not a valid count, naming the nearest valid ones.
        """
        stride = self.temporal_stride
        if isinstance(num_frames, bool) or not isinstance(num_frames, int):
            raise ValueError(f"num_frames must be an integer, got {num_frames!r}")
        if num_frames < 1 or (num_frames - 1) % stride:
            below = 1 + stride * max(0, (num_frames - 1) // stride)
            nearest = f"{below} or {below + stride}" if num_frames > 1 else "1"
            raise ValueError(
                f"num_frames={num_frames} is not a valid frame count for temporal_stride={stride}: "
                f"a video has 1 + {stride} * k frames (nearest valid: {nearest})"
            )
        return 1 + (num_frames - 1) // stride

    def frames_from_latent_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames`` latent frames: ``1 + stride * (L - 1)``.

        Args:
            latent_frames: Latent frames ``L >= 1``.

        Returns:
            The number of pixel frames.

        Raises:
            ValueError: If ``latent_frames`` is not an integer >= 1.
        """
        _check_positive_int(latent_frames, "latent_frames", "a video has at least one latent frame")
        return 1 + self.temporal_stride * (latent_frames - 1)

    # ------------------------------------------------------------------ seconds <-> latent frames

    def latent_frames_from_seconds(self, seconds: float | Fraction, rounding: Rounding = "down") -> int:
        """Latent frames of a video lasting ``seconds``, as a whole number of chunks.

        The exact length is ``1 + seconds * fps / temporal_stride`` latent frames; it is divided into
        chunks of ``num_frames_per_chunk`` and rounded to whole chunks by ``rounding``.

        Args:
            seconds: Duration ``>= 0`` (``(frames - 1) / fps``, see the module docstring).
            rounding: ``down`` (floor; the video is at most ``seconds`` long), ``up`` (ceil; at
                least ``seconds``), ``nearest`` (halves round up) or ``exact`` (raise unless the
                duration is a whole number of chunks).

        Returns:
            Latent frames, a positive multiple of ``num_frames_per_chunk``.

        Raises:
            ValueError: For an unknown ``rounding``, a negative or non-finite ``seconds``, an inexact
                length with ``rounding="exact"``, or a duration shorter than one chunk with
                ``rounding="down"`` (or ``"nearest"``).
        """
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        exact_seconds = _exact(seconds, "seconds")
        if exact_seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        chunk = self.num_frames_per_chunk
        latent = 1 + exact_seconds * _exact(self.fps, "fps") / self.temporal_stride
        chunks = latent / chunk
        down, up = math.floor(chunks), math.ceil(chunks)
        if rounding == "exact" and down != up:
            raise ValueError(
                f"{seconds} s at {self.fps} fps is {float(latent):.4g} latent frames = {float(chunks):.4g} chunks "
                f"of {chunk}, not the whole number of chunks rounding='exact' needs; use rounding='down' ({down * chunk} latent frames, "
                f"{self._seconds(down * chunk):.4g} s) or rounding='up' ({up * chunk} latent frames, "
                f"{self._seconds(up * chunk):.4g} s)"
            )
        count = {"down": down, "up": up, "nearest": math.floor(chunks + Fraction(1, 2)), "exact": down}[
            rounding
        ]
        if count < 1:
            raise ValueError(
                f"{seconds} s is shorter than one chunk of {chunk} latent frames "
                f"({self._seconds(chunk):.4g} s at {self.fps} fps); ask for a longer duration or use rounding='up'"
            )
        return count * chunk

    def seconds_from_latent_frames(self, latent_frames: int) -> float:
        """Duration of a video of ``latent_frames`` latent frames: ``(frames - 1) / fps``.

        Args:
            latent_frames: Latent frames ``L >= 1``.

        Returns:
            Seconds (21 latent frames at the defaults: 5.0).

        Raises:
            ValueError: If ``latent_frames`` is not an integer >= 1.
        """
        return self._seconds(latent_frames)

    def _seconds(self, latent_frames: int) -> float:
        return (self.frames_from_latent_frames(latent_frames) - 1) / self.fps

    # ------------------------------------------------------------------ chunks and config values

    def chunks(self, latent_frames: int) -> int:
        """Number of chunks in ``latent_frames`` latent frames.

        Args:
            latent_frames: A positive multiple of ``num_frames_per_chunk``.

        Returns:
            ``latent_frames // num_frames_per_chunk``.

        Raises:
            ValueError: If ``latent_frames`` is not a positive multiple of the chunk size.
        """
        _check_positive_int(latent_frames, "latent_frames", "a video has at least one latent frame")
        chunk = self.num_frames_per_chunk
        if latent_frames % chunk:
            below = latent_frames - latent_frames % chunk
            nearest = f"{below} or {below + chunk}" if below else f"{chunk}"
            raise ValueError(
                f"latent_frames={latent_frames} is not a whole number of chunks of num_frames_per_chunk={chunk} "
                f"(nearest whole-chunk lengths: {nearest})"
            )
        return latent_frames // chunk

    def parse_length(self, value: int | str, rounding: Rounding = "down") -> int:
        """Latent frames of a configured length: an int of latent frames or a duration like ``"100s"``.

        Args:
            value: Latent frames (an int or a string of digits, e.g. ``21``), or seconds with an ``s``
                suffix (``"5s"``, ``"2.5 s"``, ``"100s"``).
            rounding: How a duration becomes whole chunks (see :meth:`latent_frames_from_seconds`).

        Returns:
            Latent frames, a positive multiple of ``num_frames_per_chunk``.

        Raises:
            ValueError: If ``value`` has another form, or a latent-frame count is not a positive
                multiple of the chunk size.
        """
        if isinstance(value, str):
            match = _SECONDS.match(value)
            if match:
                return self.latent_frames_from_seconds(Fraction(match["number"]), rounding=rounding)
            if _INTEGER.match(value):
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"cannot read the length {value!r}: give latent frames as an integer (e.g. 21) or a duration "
                "in seconds as a string with an 's' suffix (e.g. '5s', '100s')"
            )
        self.chunks(value)  # validates: a positive whole number of chunks
        return value


def parse_length(value: int | str, timing: VideoTiming | None = None, rounding: Rounding = "down") -> int:
    """Latent frames of a configured length (``21``, ``"5s"``, ``"100s"``); see :meth:`VideoTiming.parse_length`.

    Args:
        value: Latent frames, or seconds as a string with an ``s`` suffix.
        timing: Frame rate, stride and chunk size; Wan2.1's (16 fps, stride 4, chunks of 3) if omitted.
        rounding: How a duration becomes whole chunks.

    Returns:
        Latent frames, a positive multiple of the chunk size.

    Raises:
        ValueError: See :meth:`VideoTiming.parse_length`.
    """
    return (timing or VideoTiming()).parse_length(value, rounding=rounding)
