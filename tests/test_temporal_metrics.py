"""Frame-by-frame temporal statistics (sfpp.metrics.temporal): known values on constructed videos."""

from __future__ import annotations

import numpy as np
import pytest

from sfpp.metrics.temporal import (
    back_and_forth,
    colour_flicker,
    colour_pulses,
    frame_colours,
    frame_returns,
    global_shifts,
    per_window,
)


def _grey(levels: list[float]) -> np.ndarray:
    """Flat grey frames ``(3, F, 8, 8)`` in ``[0, 1]``, one level per frame."""
    return np.broadcast_to(np.asarray(levels)[None, :, None, None], (3, len(levels), 8, 8)).copy()


def test_pulses_see_a_frame_or_a_pair_standing_out_and_not_a_step() -> None:
    colours = frame_colours(_grey([0.5, 0.5, 0.7, 0.5, 0.5, 0.6, 0.6, 0.5, 0.5, 0.8, 0.8, 0.8]))
    values = colour_pulses(colours)
    assert np.isnan(values[0]) and np.isnan(values[-1])
    assert values[2] == pytest.approx(0.2 * np.sqrt(3))  # one bright frame
    assert values[5] == pytest.approx(0.1 * np.sqrt(3))  # a bright pair, seen from its first frame
    assert values[8] == pytest.approx(0.0) and values[9] == pytest.approx(0.0)  # a step up that stays
    flicker = colour_flicker(colours)
    assert flicker[2] == pytest.approx(0.4 * np.sqrt(3))  # |0.5 - 1.4 + 0.5| per channel


def test_returns_see_back_and_forth_not_steady_change() -> None:
    steady = frame_returns(_grey([0.1 * t for t in range(6)]))
    np.testing.assert_allclose(steady[1:-1], 0.0, atol=1e-12)
    alternating = frame_returns(_grey([0.2, 0.6, 0.2, 0.6, 0.2]))
    np.testing.assert_allclose(alternating[1:-1], 0.4)  # (0.4 + 0.4 - 0) / 2


def test_global_shifts_and_back_and_forth() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((3, 24, 24))
    moves = [(1, 0), (1, 0), (0, 2), (-2, 1)]
    frames, position = [base], np.zeros(2, dtype=int)
    for dx, dy in moves:
        position += (dx, dy)
        frames.append(np.roll(base, (position[1], position[0]), axis=(1, 2)))
    rgb = np.stack(frames, axis=1)  # (3, 5, 24, 24)
    np.testing.assert_array_equal(global_shifts(rgb), np.asarray(moves, dtype=float))
    onward = back_and_forth(np.tile([[1.0, 0.0]], (8, 1)), span=4)
    np.testing.assert_allclose(onward, 0.0)  # moving on: the path is the displacement
    shaking = back_and_forth(np.asarray([[2.0, 0.0], [-2.0, 0.0]] * 4), span=4)
    # an even number of pairs around: path 2 per pair, no displacement, halved; an odd one keeps 2 px
    np.testing.assert_allclose(shaking[::2], 1.0)
    assert np.all((shaking[1::2] > 0.75) & (shaking[1::2] < 1.0))
    with pytest.raises(ValueError, match="too small"):
        global_shifts(np.zeros((3, 2, 6, 6)))


def test_per_window_groups_by_the_frame_and_skips_undefined() -> None:
    values = np.asarray([np.nan, 1.0, 2.0, 3.0, 4.0, np.nan])
    np.testing.assert_allclose(per_window(values, 3, 2), [1.0, 2.5, 4.0])
    np.testing.assert_allclose(per_window(values, 3, 2, reduce="max"), [1.0, 3.0, 4.0])
    np.testing.assert_allclose(per_window(np.full(4, np.nan), 2, 2), [0.0, 0.0])
    with pytest.raises(ValueError, match="reduce"):
        per_window(values, 3, 2, reduce="median")
