"""WindowSampler: where in a long student rollout the teacher-horizon DMD window sits.

Self-Forcing++ rolls the student out for ``N`` latent frames (far past the teacher's horizon) and
applies DMD to one contiguous window of ``K`` frames (the teacher's horizon), with the start drawn
uniformly, ``i ~ Unif{0..N-K}``. Starts are aligned to chunks so a window never cuts a chunk in two.
"""

from __future__ import annotations

import torch

__all__ = ["WindowSampler"]

_MODES: tuple[str, ...] = ("uniform", "last")


class WindowSampler:
    """Draw the start of a contiguous window of ``window_frames`` latent frames inside a rollout.

    Modes:

    * ``uniform`` (Self-Forcing++): ``i`` uniform over the chunk-aligned starts ``0, c, 2c, ..., N - K``;
    * ``last``: always ``N - K``, the newest frames (a Self-Forcing-like ablation).

    Args:
        window_frames: Window length ``K`` in latent frames (the teacher's horizon, e.g. 21).
        mode: ``uniform`` or ``last``.
        num_frames_per_chunk: Chunk size ``c``; window starts are multiples of it and ``K`` must be too.

    Raises:
        ValueError: For an unknown mode or a non-positive or non-chunk-multiple ``window_frames``.
    """

    def __init__(
        self,
        window_frames: int,
        mode: str = "uniform",
        num_frames_per_chunk: int = 1,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"WindowSampler mode must be one of {_MODES}, got {mode!r}")
        for name, value in (("window_frames", window_frames), ("num_frames_per_chunk", num_frames_per_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if window_frames % num_frames_per_chunk:
            raise ValueError(
                f"window_frames={window_frames} is not a multiple of num_frames_per_chunk={num_frames_per_chunk}; "
                "a window must hold whole chunks"
            )
        self.window_frames = window_frames
        self.mode = mode
        self.num_frames_per_chunk = num_frames_per_chunk

    def __repr__(self) -> str:
        return (
            f"WindowSampler(window_frames={self.window_frames}, mode={self.mode!r}, "
            f"num_frames_per_chunk={self.num_frames_per_chunk})"
        )

    def num_starts(self, rollout_frames: int) -> int:
        """Number of valid chunk-aligned window starts in a rollout of ``rollout_frames`` latent frames.

        Args:
            rollout_frames: Rollout length ``N``, a multiple of the chunk size and ``>= window_frames``.

        Returns:
            ``(N - K) / c + 1``.

        Raises:
            ValueError: If ``rollout_frames`` is not a chunk multiple or is shorter than the window.
        """
        chunk, window = self.num_frames_per_chunk, self.window_frames
        if isinstance(rollout_frames, bool) or not isinstance(rollout_frames, int) or rollout_frames < 1:
            raise ValueError(f"rollout_frames must be an integer >= 1, got {rollout_frames!r}")
        if rollout_frames % chunk:
            raise ValueError(
                f"rollout_frames={rollout_frames} is not a multiple of num_frames_per_chunk={chunk}; "
                "roll out whole chunks"
            )
        if window > rollout_frames:
            raise ValueError(
                f"window_frames={window} is longer than rollout_frames={rollout_frames}; "
                "lower window_frames or raise rollout_frames"
            )
        return (rollout_frames - window) // chunk + 1

    def sample(self, rollout_frames: int, generator: torch.Generator) -> int:
        """Draw a window start.

        Args:
            rollout_frames: Rollout length ``N`` in latent frames.
            generator: Source of the random draw (seeded by the caller). ``last`` draws nothing.

        Returns:
            The start ``i``: the window is frames ``[i, i + window_frames)``.

        Raises:
            ValueError: If ``rollout_frames`` does not fit the window (see :meth:`num_starts`).
        """
        num_starts = self.num_starts(rollout_frames)
        chunk = self.num_frames_per_chunk
        if self.mode == "last":
            return (num_starts - 1) * chunk
        return int(torch.randint(num_starts, (), generator=generator, device=generator.device)) * chunk
