"""Seeds derived from tuples of integers, so that independent random streams never collide.

Every stage draws the random numbers of an optimisation step from :func:`step_generator`, seeded by
``(seed, stream, step, micro-batch)``; the stream keys below keep the draws of one step apart.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "CRITIC_REINJECTION_STREAM",
    "PREFIX_STREAM",
    "STUDENT_STREAM",
    "SUPERVISED_STREAM",
    "derive_seed",
    "step_generator",
]

#: The student stages' (DMD, GRPO) rollouts, windows, exit steps and re-noising.
STUDENT_STREAM = 0
#: DMD's critic re-noising when consecutive critic steps share a rollout.
CRITIC_REINJECTION_STREAM = 1
#: DMD's prefix-training draw (whether a step starts from a real clip, and how many frames).
PREFIX_STREAM = 2
#: The supervised stages' (teacher, ODE init) per-step draws.
SUPERVISED_STREAM = 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from a tuple of non-negative integers (e.g. ``(seed, stream, index)``).

    The same keys always give the same seed, in any process; different keys give independent
    seeds (:class:`numpy.random.SeedSequence` hashes them).
    """
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_generator(seed: int, stream: int, step: int, micro_batch: int = 0) -> torch.Generator:
    """A CPU generator for the draws of one optimisation step's micro-batch (the same on every device).

    Trailing zero keys do not change the seed (``numpy``'s ``SeedSequence``): micro-batch 0 draws
    what ``derive_seed(seed, stream, step)`` seeds.
    """
    return torch.Generator().manual_seed(derive_seed(seed, stream, step, micro_batch))
