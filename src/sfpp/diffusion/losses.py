"""Training losses of the distillation stages: ODE regression, flow matching, DMD.

All losses are computed in float32 (whatever the inputs' dtype) and reduced to a scalar mean.

DMD (Distribution Matching Distillation, as in DMD2 / CausVid / Self-Forcing): with the teacher's
clean estimate ``real_x0`` (the "real score", with CFG) and the critic's ``fake_x0`` (the "fake
score", trained online on the student's samples) at a re-noised copy of the student's output
``x0``, the generator is pushed along ``-(fake_x0 - real_x0)``, normalised per sample by
``mean |x0 - real_x0|``. It is written as a surrogate MSE whose gradient with respect to ``x0`` is
that direction: ``0.5 * mean((x0 - stopgrad(x0 - grad)) ** 2)`` has gradient ``grad / numel``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfpp.diffusion.sampling import guided_flow
from sfpp.diffusion.schedule import SigmaLike, x0_from_flow

__all__ = ["dmd_loss", "flow_matching_loss", "ode_regression_loss", "real_and_fake_x0"]


def _check_same_shape(func: str, **tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{func}: inputs must have the same shape, got {listed}")


def ode_regression_loss(pred_x0: Tensor, target_x0: Tensor) -> Tensor:
    """ODE-init loss: MSE between the student's clean estimate and the teacher's ODE endpoint.

    Args:
        pred_x0: Student's ``x0`` prediction ``(B, C, F, H, W)``.
        target_x0: Teacher's ODE solution, same shape (detached inside).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: If the shapes differ.
    """
    _check_same_shape("ode_regression_loss", pred_x0=pred_x0, target_x0=target_x0)
    return F.mse_loss(pred_x0.float(), target_x0.detach().float())


def flow_matching_loss(pred_flow: Tensor, x0: Tensor, noise: Tensor, mask: Tensor | None = None) -> Tensor:
    """Denoising (flow-matching) loss: MSE between a flow prediction and ``noise - x0``.

    Trains the teacher on data and the critic on the student's detached samples. The target is
    detached inside, so a loss on student samples never reaches the student.

    Args:
        pred_flow: Model's flow at ``x_t = (1 - sigma) x0 + sigma noise``, ``(B, C, F, H, W)``.
        x0: The clean sample that was noised.
        noise: The noise that was mixed in.
        mask: Optional boolean tensor broadcastable to ``x0``, true where the loss applies (e.g.
            false on given clean frames); the loss is then the mean over those elements.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: If the shapes differ, or the mask is not boolean or selects nothing.
    """
    _check_same_shape("flow_matching_loss", pred_flow=pred_flow, x0=x0, noise=noise)
    target = noise.detach().float() - x0.detach().float()  # the flow noise - x0
    if mask is None:
        return F.mse_loss(pred_flow.float(), target)
    if mask.dtype != torch.bool:
        raise ValueError(f"flow_matching_loss: mask must be boolean, got {mask.dtype}")
    mask = torch.broadcast_to(mask, x0.shape)
    if not mask.any():
        raise ValueError("flow_matching_loss: the mask selects no element")
    return (pred_flow.float() - target).square()[mask].mean()


def dmd_loss(
    x0: Tensor,
    real_x0: Tensor,
    fake_x0: Tensor,
    eps: float = 1e-6,
    gradient_mask: Tensor | None = None,
    normaliser_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DMD generator loss on the student's clean window.

    ``grad = (fake_x0 - real_x0) / normaliser`` with ``normaliser = mean |x0 - real_x0|`` per sample
    (over every axis but the batch, computed without gradient, at least ``eps``); non-finite
    entries of ``grad`` are set to 0 (an ``inf`` becomes 0 too, rather than the largest float, so
    one bad value cannot blow up a step). The loss ``0.5 * mse(x0, stopgrad(x0 - grad))`` has
    ``d loss / d x0 = grad / x0.numel()``.

    With a ``gradient_mask`` the loss is the mean over the masked-in elements only, so that
    ``d loss / d x0 = grad / n`` there (``n`` of them) and 0 elsewhere, as in Self-Forcing's
    training code: a window whose first chunk is kept out of the gradient trains the rest at full
    strength (a mean over every element would scale it by the kept fraction, 18/21 for a 21-frame
    window in chunks of 3). The normaliser still averages over the whole window, unless a
    ``normaliser_mask`` says which elements it averages over: frames given clean (a prefix the
    window holds, :mod:`sfpp.diffusion.prefix`) have ``x0 == real_x0`` exactly, and counting them
    would shrink the normaliser, hence scale the gradient up, by the window's share of given frames.

    Args:
        x0: Student's clean window ``(B, C, F, H, W)``, with its graph.
        real_x0: Teacher's clean estimate at the re-noised window (detached inside).
        fake_x0: Critic's clean estimate at the re-noised window (detached inside).
        eps: Floor of the normaliser.
        gradient_mask: Optional boolean tensor broadcastable to ``x0``'s shape, true where the
            loss applies (e.g. ``(1, 1, F, 1, 1)`` for whole frames); ``None``: everywhere.
        normaliser_mask: Optional boolean tensor broadcastable to ``x0``, true on the elements the
            normaliser averages over; ``None``: every element.

    Returns:
        ``(loss, metrics)``: a float32 scalar, and detached float32 scalars
        ``dmd_grad_norm`` (mean absolute value of ``grad`` over all elements),
        ``dmd_normaliser`` (batch mean of the per-sample normaliser) and
        ``dmd_nonfinite_fraction`` (fraction of ``grad`` entries that were zeroed).

    Raises:
        ValueError: If the shapes differ, ``x0`` has no axis besides the batch, ``eps <= 0``, or
            ``gradient_mask`` is not a boolean tensor broadcastable to ``x0`` with at least one
            true element.
    """
    _check_same_shape("dmd_loss", x0=x0, real_x0=real_x0, fake_x0=fake_x0)
    if gradient_mask is not None:
        if gradient_mask.dtype != torch.bool:
            raise ValueError(f"dmd_loss: gradient_mask must be boolean, got {gradient_mask.dtype}")
        try:
            gradient_mask = torch.broadcast_to(gradient_mask, x0.shape)
        except RuntimeError as error:
            raise ValueError(
                f"dmd_loss: gradient_mask {tuple(gradient_mask.shape)} does not broadcast to x0 {tuple(x0.shape)}"
            ) from error
        if not gradient_mask.any():
            raise ValueError("dmd_loss: gradient_mask selects no element; the loss would be undefined")
    if x0.ndim < 2:
        raise ValueError(
            f"dmd_loss: x0 must be (B, ...) with at least one axis after the batch, got {tuple(x0.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"dmd_loss: eps must be > 0, got {eps}")
    x = x0.float()
    with torch.no_grad():
        real, fake = real_x0.detach().float(), fake_x0.detach().float()
        dims = tuple(range(1, x.ndim))
        if normaliser_mask is None:
            normaliser = (x - real).abs().mean(dim=dims, keepdim=True)  # (B, 1, ..., 1)
        else:
            weight = torch.broadcast_to(normaliser_mask, x.shape).float()
            normaliser = ((x - real).abs() * weight).sum(dim=dims, keepdim=True) / weight.sum(
                dim=dims, keepdim=True
            ).clamp_min(1.0)  # (B, 1, ..., 1): the mean over the masked-in elements
        normaliser = normaliser.clamp_min(eps)
        raw_grad = (fake - real) / normaliser
        finite = torch.isfinite(raw_grad)
        grad = torch.where(finite, raw_grad, torch.zeros_like(raw_grad))
    if gradient_mask is None:
        loss = 0.5 * F.mse_loss(x, (x - grad).detach())
    else:
        loss = 0.5 * F.mse_loss(x[gradient_mask], (x - grad).detach()[gradient_mask])
    metrics = {
        "dmd_grad_norm": grad.abs().mean(),
        "dmd_normaliser": normaliser.mean(),
        "dmd_nonfinite_fraction": (~finite).float().mean(),
    }
    return loss, metrics


@torch.no_grad()
def real_and_fake_x0(
    teacher: nn.Module,
    critic: nn.Module,
    x_t: Tensor,
    timestep: Tensor,
    sigma: SigmaLike,
    context: Tensor,
    null_context: Tensor | None,
    guidance_scale: float,
) -> tuple[Tensor, Tensor]:
    """Clean estimates of the teacher (real score, with CFG) and the critic (fake score, no CFG).

    Both run without gradient; ``x0 = x_t - sigma * flow`` (:func:`~sfpp.diffusion.schedule.x0_from_flow`).

    Args:
        teacher: Frozen bidirectional flow predictor ``teacher(x_t, timestep, context)``.
        critic: The critic (e.g. :class:`~sfpp.models.critic.ScoreCritic`), same call signature.
        x_t: Re-noised student window ``(B, C, F, H, W)``.
        timestep: ``(B,)`` or per-frame ``(B, F)`` timesteps on the 0..1000 scale.
        sigma: The matching noise levels (``timestep / 1000``), see
            :func:`~sfpp.diffusion.schedule.expand_sigma`.
        context: Text embeddings ``(B, L, D)``.
        null_context: Unconditional embeddings ``(B, L, D)`` for CFG, or ``None`` (no CFG).
        guidance_scale: Teacher CFG scale ``g`` of ``uncond + g * (cond - uncond)`` (Self-Forcing's
            ``cond + 3 (cond - uncond)`` is ``g = 4``).

    Returns:
        ``(real_x0, fake_x0)``, each shaped like ``x_t``.
    """
    x_t = x_t.detach()
    real_flow = guided_flow(teacher, x_t, timestep, context, null_context, guidance_scale)
    fake_flow = critic(x_t, timestep, context)
    return x0_from_flow(real_flow, x_t, sigma), x0_from_flow(fake_flow, x_t, sigma)
