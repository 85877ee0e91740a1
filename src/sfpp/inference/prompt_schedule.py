"""Prompt switches of a long video: which prompt conditions which latent frames.

A switch is written ``"<time>:<prompt>"``: ``"10s:a blue square bouncing on a dark background"``
(seconds) or ``"40:..."`` (latent frames). Generation runs in chunks, so a switch takes effect at a
chunk boundary: a time in seconds becomes the length in latent frames of a video lasting that long,
rounded to the nearest whole number of chunks (:meth:`VideoTiming.parse_length` with
``rounding="nearest"``); a count of latent frames must already be whole chunks. The frame and time
where each prompt really starts are reported with the video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfpp.diffusion.lengths import VideoTiming

__all__ = ["PromptSegment", "first_frame_of_latent", "parse_switch", "plan_segments"]


@dataclass(frozen=True)
class PromptSegment:
    """A run of latent frames generated under one prompt.

    Attributes:
        prompt: The prompt.
        start_frame: Absolute index of its first latent frame (a chunk boundary).
        num_frames: Latent frames it lasts (whole chunks).
    """

    prompt: str
    start_frame: int
    num_frames: int

    @property
    def end_frame(self) -> int:
        """Absolute index one past its last latent frame."""
        return self.start_frame + self.num_frames


def first_frame_of_latent(latent_frame: int, timing: VideoTiming) -> int:
    """Index of the first decoded (pixel) frame of latent frame ``latent_frame``.

    Latent frame 0 decodes to frame 0 alone and latent frame ``j >= 1`` to frames
    ``1 + stride * (j - 1) .. stride * j`` (see :mod:`sfpp.diffusion.lengths`).

    Args:
        latent_frame: Index ``j >= 0``.
        timing: Frame rate, codec stride and chunk size.
    """
    if latent_frame < 0:
        raise ValueError(f"latent_frame must be >= 0, got {latent_frame}")
    return 0 if latent_frame == 0 else timing.frames_from_latent_frames(latent_frame)


def parse_switch(spec: str) -> tuple[str, str]:
    """Split ``"<time>:<prompt>"`` into its time and prompt (both stripped).

    Raises:
        ValueError: If there is no ``:``, or the time or the prompt is empty.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"prompt switch {spec!r} must be '<time>:<prompt>', e.g. '10s:a blue square bouncing on a dark "
            "background' (seconds) or '40:...' (latent frames)"
        )
    at, prompt = (part.strip() for part in spec.split(":", 1))
    if not at or not prompt:
        raise ValueError(f"prompt switch {spec!r} needs both a time and a prompt: '<time>:<prompt>'")
    return at, prompt


def plan_segments(
    prompt: str, switches: Sequence[str], num_latent_frames: int, timing: VideoTiming
) -> list[PromptSegment]:
    """Cut a video into prompt segments at the given switches.

    Args:
        prompt: The prompt of the start of the video.
        switches: ``"<time>:<prompt>"`` strings in increasing time order.
        num_latent_frames: Length of the video in latent frames (whole chunks).
        timing: Frame rate, codec stride and chunk size.

    Returns:
        The segments in order; one segment without switches.

    Raises:
        ValueError: For a malformed switch, a switch at the start, at or past the end, or not after
            the previous one (all after rounding to chunks); the message names the switch.
    """
    starts: list[tuple[int, str]] = [(0, prompt)]
    for spec in switches:
        at, new_prompt = parse_switch(spec)
        try:
            frame = timing.parse_length(at, rounding="nearest")
        except ValueError as error:
            raise ValueError(f"cannot place prompt switch {spec!r}: {error}") from error
        previous = starts[-1][0]
        if frame <= previous or frame >= num_latent_frames:
            raise ValueError(
                f"prompt switch {spec!r} falls at latent frame {frame} (chunks of {timing.num_frames_per_chunk}); "
                f"switches must come after the previous prompt's start (frame {previous}) and before the end "
                f"of the video (frame {num_latent_frames}), in increasing order"
            )
        starts.append((frame, new_prompt))
    ends = [start for start, _ in starts[1:]] + [num_latent_frames]
    return [
        PromptSegment(prompt=text, start_frame=start, num_frames=end - start)
        for (start, text), end in zip(starts, ends, strict=True)
    ]
