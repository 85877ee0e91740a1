"""Warm-up + cosine learning-rate schedule."""

import math

import pytest
import torch

from sfpp.stages.lr_schedules import warmup_cosine


def test_warmup_then_cosine_to_the_final_ratio():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=14, final_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[4:14], lrs[5:15], strict=False))
    assert lrs[14:] == pytest.approx([0.1] * 6)


def test_a_run_shorter_than_the_warm_up_warms_up_for_half_of_it():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=100, total_steps=4, final_ratio=0.0)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])


@pytest.mark.parametrize(("warmup", "total", "ratio"), [(-1, 10, 0.1), (0, 0, 0.1), (0, 10, 1.5)])
def test_impossible_schedules_raise(warmup, total, ratio):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(optimizer, warmup, total, ratio)


def _lrs(scheduler_factory, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_a_restart_begins_a_new_warm_up_and_cosine():
    lrs = _lrs(lambda opt: warmup_cosine(opt, 2, 20, 0.1, restarts=[10]), 22)
    plain = _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1), 10)
    assert lrs[:10] == pytest.approx(plain)  # the first segment is a 10-step schedule
    assert lrs[10:12] == pytest.approx([0.5, 1.0])  # warm-up again
    assert lrs[15] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))
    assert lrs[19] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lrs[20:] == pytest.approx([0.1, 0.1])
    # A restart at step 0 (no image batches) or at or past the end (a shortened run) changes
    # nothing; a negative one is refused.
    assert _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1, restarts=[0, 10, 30]), 10) == pytest.approx(plain)
    with pytest.raises(ValueError, match="restarts"):
        _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1, restarts=[-1]), 1)


def test_phase_scales_set_the_peak_of_each_phase():
    lrs = _lrs(lambda opt: warmup_cosine(opt, 2, 20, 0.1, restarts=[10], phase_scales=[1.0, 0.5]), 20)
    plain = _lrs(lambda opt: warmup_cosine(opt, 2, 20, 0.1, restarts=[10]), 20)
    assert lrs[:10] == pytest.approx(plain[:10])
    assert lrs[10:] == pytest.approx([0.5 * lr for lr in plain[10:]])
    # With no image batches (restart at 0) the whole run is the second phase; with a run that ends
    # before the restart, the first.
    only_videos = _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1, restarts=[0], phase_scales=[1.0, 0.5]), 10)
    assert only_videos == pytest.approx(
        [0.5 * lr for lr in _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1), 10)]
    )
    only_images = _lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1, restarts=[30], phase_scales=[1.0, 0.5]), 10)
    assert only_images == pytest.approx(_lrs(lambda opt: warmup_cosine(opt, 2, 10, 0.1), 10))
    for bad in ([1.0], [1.0, 0.5, 0.2], [1.0, 0.0]):
        with pytest.raises(ValueError, match="phase_scales"):
            _lrs(lambda opt, bad=bad: warmup_cosine(opt, 2, 20, 0.1, restarts=[10], phase_scales=bad), 1)
