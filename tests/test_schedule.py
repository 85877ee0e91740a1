"""Tests for sfpp.diffusion.schedule: golden numbers, round trips, broadcasting, diffusers parity."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sfpp.diffusion import (
    NUM_TRAIN_TIMESTEPS,
    FlowMatchSchedule,
    TrainingSigmas,
    add_noise,
    euler_step,
    expand_sigma,
    flow_from_x0,
    flow_target,
    noise_from_x0,
    shift_sigma,
    sigma_from_timestep,
    timestep_from_sigma,
    unshift_sigma,
    x0_from_flow,
    x0_from_noise,
)

B, C, F, H, W = 2, 3, 5, 4, 6


def _video(seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(B, C, F, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _frame_sigma(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    # distinct sigma per (sample, frame), strictly inside (0, 1)
    return torch.linspace(0.05, 0.95, B * F, dtype=dtype).reshape(B, F)


# --------------------------------------------------------------------------- shift


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 5.0, 8.0])
def test_shift_sigma_fixes_endpoints_and_is_monotone(shift: float) -> None:
    assert shift_sigma(0.0, shift) == 0.0
    assert shift_sigma(1.0, shift) == pytest.approx(1.0, abs=1e-15)
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    shifted = shift_sigma(grid, shift)
    assert torch.all(shifted[1:] > shifted[:-1])
    assert shifted[0].item() == 0.0 and shifted[-1].item() == pytest.approx(1.0, abs=1e-15)
    if shift > 1:
        assert torch.all(shifted[1:-1] > grid[1:-1])
    if shift < 1:
        assert torch.all(shifted[1:-1] < grid[1:-1])


def test_shift_sigma_golden_and_identity() -> None:
    assert shift_sigma(0.5, 5.0) == pytest.approx(5 / 6)
    assert shift_sigma(0.25, 5.0) == pytest.approx(0.625)
    assert shift_sigma(0.001, 5.0) == pytest.approx(0.005 / 1.004)
    grid = torch.rand(100, dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(grid, 1.0), grid, rtol=0, atol=1e-15)


def test_shift_sigma_types() -> None:
    assert isinstance(shift_sigma(0.3, 5.0), float)
    out = shift_sigma(torch.tensor([0, 1]), 5.0)  # integer tensor is promoted to float
    assert out.is_floating_point()
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0]))
    out = shift_sigma(torch.tensor([0.5, 0.2], dtype=torch.float64), 5.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([5 / 6, 1 / 1.8], dtype=torch.float64))


@pytest.mark.parametrize("shift", [0.5, 3.0, 5.0, 8.0])
def test_unshift_inverts_shift(shift: float) -> None:
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(unshift_sigma(shift_sigma(grid, shift), shift), grid, rtol=0, atol=1e-12)
    assert unshift_sigma(shift_sigma(0.3, shift), shift) == pytest.approx(0.3)


@pytest.mark.parametrize("shift", [0.0, -1.0, math.nan, math.inf])
def test_bad_shift_raises(shift: float) -> None:
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(0.5, shift)
    with pytest.raises(ValueError, match="shift"):
        unshift_sigma(0.5, shift)
    with pytest.raises(ValueError, match="shift"):
        FlowMatchSchedule(shift=shift)


@pytest.mark.parametrize("n", [0, -5, 1.5, True])
def test_bad_num_train_timesteps_raises(n: object) -> None:
    with pytest.raises(ValueError, match="num_train_timesteps"):
        FlowMatchSchedule(num_train_timesteps=n)  # type: ignore[arg-type]


def test_schedule_is_frozen() -> None:
    schedule = FlowMatchSchedule(shift=5.0)
    with pytest.raises(AttributeError):
        schedule.shift = 3.0  # type: ignore[misc]


# --------------------------------------------------------------------------- timesteps


def test_timestep_sigma_conversions() -> None:
    schedule = FlowMatchSchedule(shift=5.0)  # the shift is not applied by these conversions
    t = torch.tensor([1000, 750, 20, 0])
    sigma = schedule.sigma_from_timestep(t)
    assert sigma.is_floating_point()
    torch.testing.assert_close(sigma, torch.tensor([1.0, 0.75, 0.02, 0.0]))
    torch.testing.assert_close(schedule.timestep_from_sigma(sigma), t.float())
    torch.testing.assert_close(schedule.timestep_from_sigma(0.25), torch.tensor(250.0))
    torch.testing.assert_close(schedule.apply_shift(torch.tensor(0.5)), torch.tensor(5 / 6))


def test_warp_timesteps_golden_shift5() -> None:
    warped = FlowMatchSchedule(shift=5.0).warp_timesteps([1000, 750, 500, 250])
    assert warped.dtype == torch.float32 and warped.shape == (4,)
    torch.testing.assert_close(warped, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), rtol=0, atol=1e-3)


def test_warp_timesteps_shift1_is_identity_and_accepts_tensors() -> None:
    steps = [1000.0, 757.0, 522.5, 1.0]
    torch.testing.assert_close(FlowMatchSchedule().warp_timesteps(steps), torch.tensor(steps))
    schedule = FlowMatchSchedule(shift=3.0)
    torch.testing.assert_close(
        schedule.warp_timesteps(torch.tensor(steps)), schedule.warp_timesteps(tuple(steps))
    )


def test_warp_timesteps_other_scale() -> None:
    warped = FlowMatchSchedule(num_train_timesteps=100, shift=5.0).warp_timesteps([100, 50])
    torch.testing.assert_close(warped, torch.tensor([100.0, 250 / 3]))


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        ([], "empty"),
        ([1000, 750, 0], r"steps\[2\] = 0.0 is outside"),
        ([1001, 750], r"steps\[0\] = 1001.0 is outside"),
        ([1000, -5], "outside"),
        ([1000, math.nan], "outside"),
        ([250, 500, 750, 1000], "strictly decreasing"),
        ([1000, 500, 500], "strictly decreasing"),
    ],
)
def test_warp_timesteps_rejects_bad_steps(steps: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FlowMatchSchedule(shift=5.0).warp_timesteps(steps)


def test_sampling_sigmas_golden() -> None:
    schedule = FlowMatchSchedule(shift=5.0)
    sigmas = schedule.sampling_sigmas(4)
    assert sigmas.shape == (5,) and sigmas.dtype == torch.float32
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]))
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    torch.testing.assert_close(schedule.sampling_timesteps(4), torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    # the grid's sample points are the warped uniform student steps
    torch.testing.assert_close(
        schedule.sampling_timesteps(4), schedule.warp_timesteps([1000, 750, 500, 250]), rtol=0, atol=1e-3
    )
    torch.testing.assert_close(FlowMatchSchedule().sampling_sigmas(2), torch.tensor([1.0, 0.5, 0.0]))


@pytest.mark.parametrize("n", [1, 7, 48])
def test_sampling_sigmas_decreasing(n: int) -> None:
    sigmas = FlowMatchSchedule(shift=8.0).sampling_sigmas(n)
    assert sigmas.shape == (n + 1,)
    assert torch.all(sigmas[1:] < sigmas[:-1])


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_sampling_sigmas_rejects_bad_n(n: object) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowMatchSchedule().sampling_sigmas(n)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- broadcasting


def test_expand_sigma_shapes() -> None:
    x = torch.zeros(B, C, F, H, W)
    assert expand_sigma(0.3, x).shape == (1, 1, 1, 1, 1)
    assert expand_sigma(torch.tensor(0.3), x).shape == (1, 1, 1, 1, 1)
    assert expand_sigma(torch.rand(B), x).shape == (B, 1, 1, 1, 1)
    assert expand_sigma(torch.rand(1), x).shape == (1, 1, 1, 1, 1)
    per_frame = torch.rand(B, F)
    expanded = expand_sigma(per_frame, x)
    assert expanded.shape == (B, 1, F, 1, 1)
    torch.testing.assert_close(expanded[:, 0, :, 0, 0], per_frame)
    assert expand_sigma(torch.rand(B, 1), x).shape == (B, 1, 1, 1, 1)
    # already expanded: unchanged
    assert expand_sigma(expanded, x).shape == (B, 1, F, 1, 1)
    # other layouts: (B, F, C, H, W)
    assert expand_sigma(per_frame, torch.zeros(B, F, C, H, W), frame_dim=1).shape == (B, F, 1, 1, 1)
    assert expand_sigma(torch.rand(B), torch.zeros(B, 7)).shape == (B, 1)


def test_expand_sigma_dtype_and_device() -> None:
    assert expand_sigma(0.3, torch.zeros(2, 3, dtype=torch.bfloat16)).dtype == torch.float32
    assert expand_sigma(torch.rand(2, dtype=torch.float64), torch.zeros(2, 3)).dtype == torch.float32
    assert expand_sigma(0.3, torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert expand_sigma(torch.tensor([1, 0]), torch.zeros(2, 3)).dtype == torch.float32


@pytest.mark.parametrize(
    "sigma_shape",
    [(B + 1,), (B, F + 1), (B + 1, F), (B, C, F), (B, 1, F + 1, 1, 1), (B, C, F, H, W, 1)],
)
def test_expand_sigma_rejects_bad_shapes(sigma_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="cannot be broadcast"):
        expand_sigma(torch.rand(sigma_shape), torch.zeros(B, C, F, H, W))


def test_expand_sigma_rejects_bad_frame_dim_and_scalar_like() -> None:
    with pytest.raises(ValueError, match="frame_dim"):
        expand_sigma(torch.rand(B, F), torch.zeros(B, C, F, H, W), frame_dim=0)
    with pytest.raises(ValueError, match="frame_dim"):
        expand_sigma(torch.rand(B, F), torch.zeros(B, C, F, H, W), frame_dim=5)
    with pytest.raises(ValueError, match="cannot be broadcast"):
        expand_sigma(torch.rand(B), torch.tensor(1.0))


def test_add_noise_per_frame_sigma() -> None:
    x0, noise, sigma = _video(0), _video(1), _frame_sigma()
    x_t = add_noise(x0, noise, sigma)
    assert x_t.shape == x0.shape
    for b in range(B):
        for f in range(F):
            s = sigma[b, f].item()
            expected = (1 - s) * x0[b, :, f] + s * noise[b, :, f]
            torch.testing.assert_close(x_t[b, :, f], expected, rtol=0, atol=1e-12)


def test_add_noise_scalar_batch_and_endpoints() -> None:
    x0, noise = _video(0), _video(1)
    torch.testing.assert_close(add_noise(x0, noise, 0.0), x0)
    torch.testing.assert_close(add_noise(x0, noise, 1.0), noise)
    per_sample = torch.tensor([0.2, 0.7], dtype=torch.float64)
    same = add_noise(x0, noise, per_sample[:, None].expand(B, F))
    torch.testing.assert_close(add_noise(x0, noise, per_sample), same)
    torch.testing.assert_close(add_noise(x0[:1], noise[:1], 0.2), same[:1])


def test_add_noise_keeps_half_precision_dtype() -> None:
    x0, noise = _video(0, torch.bfloat16), _video(1, torch.bfloat16)
    x_t = add_noise(x0, noise, _frame_sigma(torch.float32))
    assert x_t.dtype == torch.bfloat16
    reference = add_noise(x0.double(), noise.double(), _frame_sigma())
    torch.testing.assert_close(x_t.double(), reference, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("kind", ["scalar", "batch", "frame"])
def test_conversion_round_trips(kind: str) -> None:
    x0, noise = _video(2), _video(3)
    sigma: float | torch.Tensor = {
        "scalar": 0.37,
        "batch": torch.tensor([0.1, 0.9], dtype=torch.float64),
        "frame": _frame_sigma(),
    }[kind]
    x_t = add_noise(x0, noise, sigma)
    flow = flow_target(x0, noise)
    torch.testing.assert_close(flow, noise - x0)
    torch.testing.assert_close(x0_from_flow(flow, x_t, sigma), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(flow_from_x0(x0, x_t, sigma), flow, rtol=0, atol=1e-6)
    torch.testing.assert_close(noise_from_x0(x0, x_t, sigma), noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_from_noise(noise, x_t, sigma), x0, rtol=0, atol=1e-6)
    # chained: x0 -> x_t -> flow -> x0 -> noise -> x0
    x0_hat = x0_from_flow(flow_from_x0(x0, x_t, sigma), x_t, sigma)
    noise_hat = noise_from_x0(x0_hat, x_t, sigma)
    torch.testing.assert_close(x0_from_noise(noise_hat, x_t, sigma), x0, rtol=0, atol=1e-6)


def test_conversions_float32() -> None:
    x0, noise, sigma = _video(2, torch.float32), _video(3, torch.float32), _frame_sigma(torch.float32)
    x_t = add_noise(x0, noise, sigma)
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(x0_from_flow(flow_target(x0, noise), x_t, sigma), x0, rtol=0, atol=1e-5)


def test_timestep_conversions_are_the_schedules() -> None:
    schedule = FlowMatchSchedule(shift=5.0)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(timestep_from_sigma(sigma), schedule.timestep_from_sigma(sigma))
    torch.testing.assert_close(timestep_from_sigma(sigma), torch.tensor([0.0, 250.0, 1000.0]))
    torch.testing.assert_close(sigma_from_timestep(torch.tensor([0, 250, 1000])), sigma)
    assert NUM_TRAIN_TIMESTEPS == schedule.num_train_timesteps == 1000
    assert not hasattr(FlowMatchSchedule, "add_noise")  # one API: the module's functions


def test_euler_step_follows_the_straight_path() -> None:
    x0, noise, sigma = _video(4), _video(5), _frame_sigma()
    sigma_next = sigma * 0.5
    x_t = add_noise(x0, noise, sigma)
    flow = flow_target(x0, noise)  # exact flow: Euler is exact on straight paths
    torch.testing.assert_close(euler_step(x_t, flow, sigma, sigma_next), add_noise(x0, noise, sigma_next))
    torch.testing.assert_close(euler_step(x_t, flow, sigma, 0.0), x0_from_flow(flow, x_t, sigma))
    torch.testing.assert_close(euler_step(x_t, flow, sigma, 0.0), x0, rtol=0, atol=1e-12)
    # per-sample current sigma, scalar next sigma
    sb = torch.tensor([0.8, 0.3], dtype=torch.float64)
    torch.testing.assert_close(euler_step(add_noise(x0, noise, sb), flow, sb, 0.1), add_noise(x0, noise, 0.1))


def test_euler_step_golden() -> None:
    x_t = torch.full((1, 1, 2, 1, 1), 2.0)
    flow = torch.full((1, 1, 2, 1, 1), 4.0)
    out = euler_step(x_t, flow, torch.tensor([[1.0, 0.5]]), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 1.0]))


def test_division_guards() -> None:
    x0, noise = _video(0), _video(1)
    sigma = _frame_sigma()
    sigma[1, 3] = 0.0
    x_t = add_noise(x0, noise, sigma)
    with pytest.raises(ValueError, match=r"flow_from_x0 divides by sigma"):
        flow_from_x0(x0, x_t, sigma)
    with pytest.raises(ValueError, match=r"noise_from_x0 divides by sigma"):
        noise_from_x0(x0, x_t, 0.0)
    with pytest.raises(ValueError, match=r"x0_from_noise divides by 1 - sigma"):
        x0_from_noise(noise, noise, 1.0)
    with pytest.raises(ValueError, match="eps=0.01"):
        flow_from_x0(x0, x_t, 0.005, eps=0.01)
    # x0_from_flow and euler_step never divide: fine at both ends
    torch.testing.assert_close(x0_from_flow(noise - x0, noise, 1.0), x0)
    torch.testing.assert_close(x0_from_flow(noise - x0, x0, 0.0), x0)


def test_shape_mismatch_raises() -> None:
    a, b = torch.zeros(B, C, F, H, W), torch.zeros(B, C, F + 1, H, W)
    for func in (add_noise, x0_from_flow, flow_from_x0, noise_from_x0, x0_from_noise):
        with pytest.raises(ValueError, match="same shape"):
            func(a, b, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        flow_target(a, b)
    with pytest.raises(ValueError, match="same shape"):
        euler_step(a, b, 0.5, 0.25)
    with pytest.raises(ValueError, match="cannot be broadcast"):
        add_noise(a, a, torch.rand(B, F + 1))


# --------------------------------------------------------------------------- diffusers parity


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0])
def test_training_table_matches_diffusers(shift: float) -> None:
    """diffusers' constructor table sigma_k = shift(k / 1000), k = 1000..1, is our warp of 1000..1."""
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    schedule = FlowMatchSchedule(num_train_timesteps=1000, shift=shift)
    ours = schedule.warp_timesteps(list(range(1000, 0, -1)))
    torch.testing.assert_close(ours, ref.timesteps.float(), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(schedule.sigma_from_timestep(ours), ref.sigmas.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("shift", "n"), [(1.0, 4), (5.0, 4), (5.0, 10), (8.0, 48)])
def test_sampling_grid_matches_diffusers_given_unshifted_sigmas(shift: float, n: int) -> None:
    schedule = FlowMatchSchedule(shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, n + 1, dtype=torch.float64)[:n].tolist())
    torch.testing.assert_close(ref.sigmas, schedule.sampling_sigmas(n), rtol=0, atol=1e-6)
    torch.testing.assert_close(ref.timesteps, schedule.sampling_timesteps(n), rtol=0, atol=1e-3)


def test_default_diffusers_grid_differs_as_documented() -> None:
    """set_timesteps(n) alone uses linspace(1, shift(1/1000), n), shifted again, then a terminal 0."""
    shift, n = 5.0, 4
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(n)
    sigma_min = shift_sigma(1 / 1000, shift)
    expected = shift_sigma(torch.linspace(1, sigma_min, n, dtype=torch.float64), shift)
    torch.testing.assert_close(ref.sigmas[:-1].double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ref.sigmas, torch.tensor([1.0, 0.909707, 0.717317, 0.024414, 0.0]), atol=1e-5, rtol=0
    )
    ours = FlowMatchSchedule(shift=shift).sampling_sigmas(n)
    assert ref.sigmas[0].item() == ours[0].item() == 1.0
    assert ref.sigmas[-1].item() == ours[-1].item() == 0.0
    assert torch.all((ref.sigmas[1:-1] - ours[1:-1]).abs() > 0.02)


def test_euler_step_matches_diffusers_step() -> None:
    shift, n = 5.0, 6
    schedule = FlowMatchSchedule(shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, n + 1, dtype=torch.float64)[:n].tolist())
    sigmas = schedule.sampling_sigmas(n)
    weight = torch.randn(C, C, generator=torch.Generator().manual_seed(7))

    def fake_flow(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.einsum("dc,bcfhw->bdfhw", weight, x) * (1 + sigma)

    x_ref = x_ours = _video(8, torch.float32)
    for i, t in enumerate(ref.timesteps):
        flow = fake_flow(x_ref, sigmas[i].item())
        expected = ref.step(flow, t, x_ref).prev_sample
        ours = euler_step(x_ref, flow, sigmas[i], sigmas[i + 1])
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
        x_ours = euler_step(x_ours, fake_flow(x_ours, sigmas[i].item()), sigmas[i], sigmas[i + 1])
        x_ref = expected
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers_scale_noise() -> None:
    shift, n = 5.0, 4
    schedule = FlowMatchSchedule(shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, n + 1, dtype=torch.float64)[:n].tolist())
    x0, noise = _video(9, torch.float32), _video(10, torch.float32)
    for i in range(n):
        expected = ref.scale_noise(x0, ref.timesteps[i : i + 1], noise)
        ours = add_noise(x0, noise, schedule.sigma_from_timestep(ref.timesteps[i]))
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- training levels


def test_training_sigmas_uniform_and_logit_normal() -> None:
    torch.manual_seed(0)
    uniform = TrainingSigmas()(20000)
    torch.manual_seed(0)
    logit = TrainingSigmas(logit_normal=(0.0, 1.0))(20000)
    assert uniform.shape == logit.shape == (20000,) and uniform.dtype == torch.float32
    assert float(uniform.min()) >= 0.0 and float(uniform.max()) <= 1.0
    assert float(logit.min()) > 0.0 and float(logit.max()) < 1.0

    def middle(s: torch.Tensor) -> float:
        return float(((s > 0.3) & (s < 0.7)).float().mean())

    # P(0.3 < u < 0.7) is 0.4 for uniform u and P(|z| < logit(0.7)) = 0.60 for logit(u) ~ N(0, 1).
    assert middle(uniform) == pytest.approx(0.4, abs=0.015)
    assert middle(logit) == pytest.approx(0.600, abs=0.015)
    assert float((logit > 0.9).float().mean()) == pytest.approx(0.014, abs=0.005)
    # The mean moves the mass: logit(u) ~ N(1, 1) puts most of it above 1/2.
    assert float((TrainingSigmas(logit_normal=(1.0, 1.0))(5000) > 0.5).float().mean()) == pytest.approx(
        0.84, abs=0.02
    )


def test_training_sigmas_are_shifted_after_drawing() -> None:
    torch.manual_seed(3)
    plain = TrainingSigmas(logit_normal=(0.0, 0.5))(64)
    torch.manual_seed(3)
    shifted = TrainingSigmas(shift=3.0, logit_normal=(0.0, 0.5))(64)
    assert torch.allclose(shifted, shift_sigma(plain, 3.0))
    with pytest.raises(ValueError, match="std > 0"):
        TrainingSigmas(logit_normal=(0.0, 0.0))
    generator = torch.Generator().manual_seed(5)
    seeded = TrainingSigmas(logit_normal=(0.0, 0.5))(8, generator=generator)
    assert torch.equal(
        seeded, TrainingSigmas(logit_normal=(0.0, 0.5))(8, generator=torch.Generator().manual_seed(5))
    )
