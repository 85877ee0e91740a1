"""The objective of Group Relative Policy Optimisation over few-step rollouts.

A batch holds ``P`` prompts with ``G`` rollouts each, laid out group by group (rows
``g * G .. g * G + G - 1`` share a prompt). Each rollout gets one reward; its advantage is the reward
standardised within its group (:func:`group_advantages`), so no value network is needed. Every
stochastic transition of the rollout (:class:`~sfpp.diffusion.policy.StepTransition`) is an action:
the PPO-style clipped surrogate (:func:`clipped_policy_loss`) weighs the importance ratio of its
log-probability under the current and the sampling weights by the rollout's advantage, and
:func:`transition_kl` keeps the policy near a frozen reference student.

Log-probabilities of video-sized Gaussians are sums over ~10^4-10^6 elements, so their differences
overflow ``exp``; as Flow-GRPO does, the ratio uses log-probabilities per element
(``log_prob / numel``), and the KL term is likewise per element.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

__all__ = ["clipped_policy_loss", "group_advantages", "transition_kl"]


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Rewards standardised within each group of ``group_size`` consecutive rollouts.

    Args:
        rewards: ``(P * G,)`` rewards, group by group.
        group_size: Rollouts per prompt ``G >= 2``.
        eps: Added to the group's (population) standard deviation; a group whose rewards are all
            equal gets zero advantages.

    Returns:
        ``(P * G,)`` float32 advantages with zero mean and unit (population) standard deviation
        within every group whose rewards differ.

    Raises:
        ValueError: If ``rewards`` is not 1-D, ``group_size < 2`` or does not divide its length.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (P * G,), got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} must be >= 2 and divide the {rewards.numel()} rewards")
    groups = rearrange(rewards.float(), "(p g) -> p g", g=group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return rearrange((groups - mean) / (std + eps), "p g -> (p g)")


def clipped_policy_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_range: float, numel: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, to be minimised.

    Args:
        log_probs: ``(B, T)`` log-probabilities of ``T`` transitions per rollout under the current
            weights (with their graph).
        old_log_probs: ``(B, T)`` the same under the sampling weights (no graph).
        advantages: ``(B,)`` per-rollout advantages.
        clip_range: The ratio is clipped to ``[1 - clip_range, 1 + clip_range]``.
        numel: Elements per transition sample; log-probabilities are divided by it (see module doc).

    Returns:
        The scalar loss ``-mean(min(r * A, clip(r) * A))`` and diagnostics: the mean ratio and the
        fraction of clipped terms.

    Raises:
        ValueError: For mismatched shapes or a non-positive clip range.
    """
    if log_probs.shape != old_log_probs.shape or log_probs.ndim != 2:
        raise ValueError(
            f"log_probs {tuple(log_probs.shape)} and old_log_probs {tuple(old_log_probs.shape)} must both be (B, T)"
        )
    if advantages.shape != log_probs.shape[:1]:
        raise ValueError(f"advantages must be ({log_probs.shape[0]},), got {tuple(advantages.shape)}")
    if clip_range <= 0:
        raise ValueError(f"clip_range must be positive, got {clip_range}")
    ratio = torch.exp((log_probs.float() - old_log_probs.float().detach()) / numel)  # (B, T)
    adv = advantages.float().detach()[:, None]  # (B,) -> (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * adv
    loss = -torch.minimum(unclipped, clipped).mean()
    stats = {
        "ratio": ratio.detach().mean(),
        "clip_fraction": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
    }
    return loss, stats


def transition_kl(mean: Tensor, reference_mean: Tensor, std: float) -> Tensor:
    """KL divergence per element between two Gaussian transitions of the same ``std``.

    ``KL(N(mean, s^2) || N(ref, s^2)) = |mean - ref|^2 / (2 s^2)``, summed over a sample's elements
    and divided by their number.

    Args:
        mean: ``(B, ...)`` transition means under the policy (with their graph).
        reference_mean: The reference student's means, same shape.
        std: The transition's standard deviation.

    Returns:
        ``(B,)`` float32 KL per element.

    Raises:
        ValueError: For mismatched shapes or a non-positive ``std``.
    """
    if mean.shape != reference_mean.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and reference_mean {tuple(reference_mean.shape)} differ")
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    diff = (mean.float() - reference_mean.float().detach()).reshape(mean.shape[0], -1)  # (B, ...) -> (B, N)
    return diff.square().mean(dim=1) / (2.0 * std**2)
