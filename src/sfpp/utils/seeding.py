"""Seeds derived from tuples of integers, so that independent random streams never collide."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from a tuple of non-negative integers (e.g. ``(seed, stream, index)``).

    The same keys always give the same seed, in any process; different keys give independent
    seeds (:class:`numpy.random.SeedSequence` hashes them).
    """
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))
