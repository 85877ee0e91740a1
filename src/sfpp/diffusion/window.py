"""WindowSampler: where in a long student rollout the teacher-horizon DMD window sits.

Self-Forcing++ rolls the student out for ``N`` latent frames (far past the teacher's horizon) and
applies DMD to one contiguous window of ``K`` frames (the teacher's horizon), with the start drawn
uniformly, ``i ~ Unif{0..N-K}``. Starts are aligned to chunks so a window never cuts a chunk in two.
"""

from __future__ import annotations

import math

import torch

__all__ = ["WindowSampler"]

_MODES: tuple[str, ...] = ("uniform", "last", "beta")


def _draw_uniform(generator: torch.Generator) -> float:
    """One draw from ``U[0, 1)``."""
    return float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))


def _draw_normal(generator: torch.Generator) -> float:
    """One draw from ``N(0, 1)``."""
    return float(torch.randn((), generator=generator, device=generator.device, dtype=torch.float64))


def _draw_gamma(shape: float, generator: torch.Generator) -> float:
    """One draw from ``Gamma(shape, 1)`` (Marsaglia and Tsang's squeeze-rejection method).

    ``torch.distributions`` cannot take a generator, so the draw is built from seeded normal and
    uniform draws. For ``shape < 1`` it uses ``Gamma(shape) = Gamma(shape + 1) * U ** (1 / shape)``.
    """
    if shape < 1:
        return _draw_gamma(shape + 1, generator) * _draw_uniform(generator) ** (1 / shape)
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    while True:
        z = _draw_normal(generator)
        v = (1 + c * z) ** 3
        if v <= 0:
            continue
        u = _draw_uniform(generator)
        if u < 1 - 0.0331 * z**4 or math.log(max(u, 1e-300)) < 0.5 * z * z + d * (1 - v + math.log(v)):
            return d * v


def _draw_beta(a: float, b: float, generator: torch.Generator) -> float:
    """One draw from ``Beta(a, b)`` as ``X / (X + Y)``, ``X ~ Gamma(a)``, ``Y ~ Gamma(b)``."""
    x = _draw_gamma(a, generator)
    y = _draw_gamma(b, generator)
    return x / (x + y) if x + y > 0 else 0.5


class WindowSampler:
    """Draw the start of a contiguous window of ``window_frames`` latent frames inside a rollout.

    Modes:

    * ``uniform`` (Self-Forcing++): ``i`` uniform over the chunk-aligned starts ``0, c, 2c, ..., N - K``;
    * ``last``: always ``N - K``, the newest frames (a Self-Forcing-like ablation);
    * ``beta``: ``i = round(Beta(a, b) * (N - K) / c) * c``, snapped to chunks (an ablation;
      ``beta=(2, 1)`` favours later windows).

    Args:
        window_frames: Window length ``K`` in latent frames (the teacher's horizon, e.g. 21).
        mode: ``uniform``, ``last`` or ``beta``.
        num_frames_per_chunk: Chunk size ``c``; window starts are multiples of it and ``K`` must be too.
        beta: Shape parameters ``(a, b)`` of the ``beta`` mode, both > 0.

    Raises:
        ValueError: For an unknown mode, a non-positive or non-chunk-multiple ``window_frames`` or
            invalid beta parameters.
    """

    def __init__(
        self,
        window_frames: int,
        mode: str = "uniform",
        num_frames_per_chunk: int = 1,
        beta: tuple[float, float] = (2.0, 1.0),
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
        a, b = (float(p) for p in beta)
        if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
            raise ValueError(f"beta must be two finite shape parameters > 0, got {tuple(beta)}")
        self.window_frames = window_frames
        self.mode = mode
        self.num_frames_per_chunk = num_frames_per_chunk
        self.beta = (a, b)

    def __repr__(self) -> str:
        return (
            f"WindowSampler(window_frames={self.window_frames}, mode={self.mode!r}, "
            f"num_frames_per_chunk={self.num_frames_per_chunk}, beta={self.beta})"
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
            index = num_starts - 1
        elif self.mode == "uniform":
            index = int(torch.randint(num_starts, (), generator=generator, device=generator.device))
        else:
            index = round(_draw_beta(*self.beta, generator) * (num_starts - 1))
        return index * chunk
