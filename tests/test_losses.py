"""Tests for sfpp.diffusion.losses: the DMD gradient identity, normalisation, NaN safety, CFG estimates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfpp.diffusion.losses import dmd_loss, flow_matching_loss, ode_regression_loss, real_and_fake_x0
from sfpp.models import build_model
from sfpp.models.critic import ScoreCritic


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _video(seed: int, shape=(2, 3, 4, 4, 4), requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed)).requires_grad_(requires_grad)


# --------------------------------------------------------------------------- ODE regression, flow matching


def test_ode_regression_is_float32_mse_and_does_not_reach_the_target():
    pred = _video(0, requires_grad=True)
    target = _video(1, requires_grad=True)
    loss = ode_regression_loss(pred.bfloat16(), target)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert torch.allclose(ode_regression_loss(pred, target), F.mse_loss(pred, target))
    ode_regression_loss(pred, target).backward()
    assert pred.grad is not None and target.grad is None
    with pytest.raises(ValueError, match="same shape"):
        ode_regression_loss(pred, target[:1])


def test_flow_matching_loss_is_zero_at_the_exact_target():
    x0, noise = _video(0), _video(1)
    assert flow_matching_loss(noise - x0, x0, noise).item() == 0.0
    pred = _video(2)
    assert torch.allclose(flow_matching_loss(pred, x0, noise), ((pred - (noise - x0)) ** 2).mean())


def test_flow_matching_loss_trains_the_prediction_only():
    pred = _video(2, requires_grad=True)
    x0 = _video(0, requires_grad=True)  # e.g. a student sample that was not detached
    flow_matching_loss(pred, x0, _video(1)).backward()
    assert pred.grad is not None and x0.grad is None
    with pytest.raises(ValueError, match="noise"):
        flow_matching_loss(pred, x0, _video(1)[:, :2])


# --------------------------------------------------------------------------- DMD


def _dyadic_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs whose DMD arithmetic is exact in float32: |x0 - real| = 1 (sample 0) and 2 (sample 1)."""
    shape = (2, 1, 2, 2, 2)  # 16 elements
    x0 = torch.randint(-8, 8, shape, generator=_gen(0)).float() / 4
    sign = torch.randint(0, 2, shape, generator=_gen(1)).float() * 2 - 1
    scale = torch.tensor([1.0, 2.0])[:, None, None, None, None]  # (B, 1, 1, 1, 1)
    real = x0 - sign * scale
    fake = real + torch.randint(-4, 5, shape, generator=_gen(2)).float() / 4
    grad = (fake - real) / scale
    return x0, real, fake, grad


def test_dmd_gradient_identity_is_exact():
    x0, real, fake, grad = _dyadic_case()
    x0.requires_grad_(True)
    loss, metrics = dmd_loss(x0, real, fake)
    loss.backward()
    assert torch.equal(x0.grad, grad / x0.numel())  # 0.5 * 2 = 1: d loss / d x0 = grad / numel
    assert torch.equal(loss, 0.5 * (grad**2).mean())
    assert torch.equal(metrics["dmd_normaliser"], torch.tensor(1.5))  # mean of 1 and 2
    assert torch.equal(metrics["dmd_grad_norm"], grad.abs().mean())
    assert metrics["dmd_nonfinite_fraction"].item() == 0.0


def test_dmd_gradient_matches_the_formula_on_random_inputs():
    x0 = _video(0, requires_grad=True)
    real, fake = _video(1), _video(2)
    dmd_loss(x0, real, fake)[0].backward()
    for b in range(x0.shape[0]):
        normaliser = (x0[b] - real[b]).abs().mean()
        expected = (fake[b] - real[b]) / normaliser / x0.numel()
        assert torch.allclose(x0.grad[b], expected, rtol=1e-5, atol=1e-9)


def test_dmd_pushes_the_student_towards_real_and_away_from_fake():
    x0 = _video(0, requires_grad=True)
    real, fake = _video(1), _video(2)
    dmd_loss(x0, real, fake)[0].backward()
    with torch.no_grad():
        stepped = x0 - 100.0 * x0.grad  # a gradient-descent step moves x0 along real - fake
    assert torch.all(torch.sign(stepped - x0) == torch.sign(real - fake))


def test_dmd_zero_gradient_when_fake_equals_real():
    x0 = _video(0, requires_grad=True)
    real = _video(1)
    loss, metrics = dmd_loss(x0, real, real.clone())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x0.grad) == 0
    assert metrics["dmd_grad_norm"].item() == 0.0


def test_dmd_normaliser_is_per_sample():
    x0 = _video(0, requires_grad=True)
    real = _video(1)
    fake = real + 0.5
    far_real = real.clone()
    far_real[1] = x0[1].detach() + 10 * (real[1] - x0[1].detach())  # sample 1 ten times further from real
    far_fake = far_real + 0.5
    dmd_loss(x0, real, fake)[0].backward()
    near = x0.grad.clone()
    x0.grad = None
    dmd_loss(x0, far_real, far_fake)[0].backward()
    assert torch.allclose(x0.grad[0], near[0])  # sample 0 unaffected
    assert torch.allclose(x0.grad[1], near[1] / 10, rtol=1e-5)


def test_dmd_normaliser_is_clamped_away_from_zero():
    x0 = _video(0, requires_grad=True)
    loss, metrics = dmd_loss(x0, x0.detach().clone(), x0.detach() + 1e-3, eps=1e-2)
    loss.backward()
    assert metrics["dmd_normaliser"].item() == pytest.approx(1e-2)
    assert torch.allclose(x0.grad, torch.full_like(x0, 0.1 / x0.numel()), rtol=1e-3)  # x0 + 1e-3 - x0 rounds


def test_dmd_is_nan_safe():
    x0 = _video(0, requires_grad=True)
    real, fake = _video(1), _video(2)
    real[0, 0, 0, 0, 0] = float("nan")  # poisons sample 0's normaliser
    fake[1, 0, 0, 0, 0] = float("inf")  # one bad entry in sample 1
    loss, metrics = dmd_loss(x0, real, fake)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x0.grad).all()
    assert torch.count_nonzero(x0.grad[0]) == 0
    assert x0.grad[1, 0, 0, 0, 0] == 0
    assert torch.count_nonzero(x0.grad[1]) == x0[1].numel() - 1
    assert metrics["dmd_nonfinite_fraction"].item() == pytest.approx((x0[0].numel() + 1) / x0.numel())


def test_dmd_targets_are_detached_and_half_precision_works():
    x0 = _video(0).bfloat16().requires_grad_(True)
    real, fake = _video(1, requires_grad=True), _video(2, requires_grad=True)
    loss, metrics = dmd_loss(x0, real, fake)
    assert loss.dtype == torch.float32
    assert all(not m.requires_grad for m in metrics.values())
    loss.backward()
    assert x0.grad.dtype == torch.bfloat16
    assert real.grad is None and fake.grad is None


def test_dmd_errors():
    with pytest.raises(ValueError, match="same shape"):
        dmd_loss(_video(0), _video(1), _video(2)[:1])
    with pytest.raises(ValueError, match="axis after the batch"):
        dmd_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="eps"):
        dmd_loss(_video(0), _video(1), _video(2), eps=0.0)


# --------------------------------------------------------------------------- real and fake estimates


def _tiny_teacher_and_critic() -> tuple[torch.nn.Module, ScoreCritic]:
    torch.manual_seed(0)
    teacher = build_model("tiny", causal=False, attention_backend="sdpa").eval().requires_grad_(False)
    critic = ScoreCritic.from_teacher(teacher)
    with torch.no_grad():
        for p in critic.parameters():  # make the critic differ from the teacher
            p.add_(0.05 * torch.randn(p.shape, generator=_gen(3)))
    return teacher, critic


def _window() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_t = torch.randn(2, 4, 3, 4, 4, generator=_gen(0))
    timestep = torch.tensor([300.0, 800.0])
    sigma = timestep / 1000
    context = torch.randn(2, 5, 16, generator=_gen(1))
    null_context = torch.zeros(2, 5, 16)
    return x_t, timestep, sigma, context, null_context


def test_real_and_fake_x0_match_a_manual_computation():
    teacher, critic = _tiny_teacher_and_critic()
    x_t, timestep, sigma, context, null_context = _window()
    real, fake = real_and_fake_x0(teacher, critic, x_t, timestep, sigma, context, null_context, 3.0)
    with torch.no_grad():
        cond = teacher(x_t, timestep, context)
        uncond = teacher(x_t, timestep, null_context)
        s = sigma[:, None, None, None, None]  # (B, 1, 1, 1, 1)
        expected_real = x_t - s * (uncond + 3.0 * (cond - uncond))
        expected_fake = x_t - s * critic.model(x_t, timestep, context)
    assert torch.allclose(real, expected_real, atol=1e-5)
    assert torch.allclose(fake, expected_fake, atol=1e-5)
    assert not torch.allclose(real, fake, atol=1e-3)


def test_real_and_fake_x0_without_guidance_and_without_gradients():
    teacher, critic = _tiny_teacher_and_critic()
    x_t, timestep, sigma, context, _ = _window()
    x_t.requires_grad_(True)
    real, fake = real_and_fake_x0(teacher, critic, x_t, timestep, sigma, context, None, 3.0)
    assert not real.requires_grad and not fake.requires_grad
    with torch.no_grad():
        expected = x_t - sigma[:, None, None, None, None] * teacher(x_t, timestep, context)
    assert torch.allclose(real, expected, atol=1e-6)
    fresh = ScoreCritic.from_teacher(teacher)  # an untrained critic agrees with the unguided teacher
    real_g1, fake_g1 = real_and_fake_x0(
        teacher, fresh, x_t, timestep, sigma, context, torch.zeros_like(context), 1.0
    )
    assert torch.allclose(real_g1, fake_g1, atol=1e-6)


def test_masked_dmd_loss_is_the_mean_over_the_frames_that_keep_their_graph():
    """Self-Forcing's masked loss: full-strength gradient on the kept frames, none on the masked chunk."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 3, 7, 4, 4, generator=g).requires_grad_(True)
    real, fake = torch.randn(2, 3, 7, 4, 4, generator=g), torch.randn(2, 3, 7, 4, 4, generator=g)
    mask = torch.ones(1, 1, 7, 1, 1, dtype=torch.bool)
    mask[:, :, :2] = False
    loss, _ = dmd_loss(x0, real, fake, gradient_mask=mask)
    loss.backward()
    normaliser = (x0.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)  # over the whole window
    grad = (fake - real) / normaliser
    kept = 2 * 3 * 5 * 4 * 4
    torch.testing.assert_close(x0.grad[:, :, 2:], grad[:, :, 2:] / kept)
    assert torch.all(x0.grad[:, :, :2] == 0)
    torch.testing.assert_close(loss, 0.5 * grad[:, :, 2:].square().mean())
    # every frame kept: the plain mean
    full, _ = dmd_loss(x0, real, fake, gradient_mask=torch.ones(1, 1, 7, 1, 1, dtype=torch.bool))
    torch.testing.assert_close(full, dmd_loss(x0, real, fake)[0])


def test_masked_dmd_loss_refuses_a_mask_it_cannot_use():
    x0 = torch.randn(1, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="boolean"):
        dmd_loss(x0, x0, x0, gradient_mask=torch.ones(1, 1, 3, 1, 1))
    with pytest.raises(ValueError, match="does not broadcast"):
        dmd_loss(x0, x0, x0, gradient_mask=torch.ones(1, 1, 4, 1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no element"):
        dmd_loss(x0, x0, x0, gradient_mask=torch.zeros(1, 1, 3, 1, 1, dtype=torch.bool))
