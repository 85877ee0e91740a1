"""Stage 3: Group Relative Policy Optimisation of the student (Self-Forcing++'s last stage).

Every optimisation step:

1. each of the batch's ``P`` prompts is rolled out ``G`` times (``group_size``) by the current
   student through its rolling KV cache, with the stochastic few-step sampler
   (:class:`~sfpp.diffusion.policy.StepTransition`) recording every move and its log-probability;
2. the videos are decoded and scored by the reward (videos in, one score each; for the paper the
   optical-flow continuity reward, :class:`~sfpp.rewards.FlowContinuityReward`), and each reward
   is standardised within its prompt's group (the advantage);
3. for ``ppo_epochs`` updates, the recorded moves are replayed chunk by chunk under the current
   weights and under the frozen reference student (the GRPO start point), and the clipped
   importance-ratio surrogate plus ``kl_weight`` times the KL to the reference is backpropagated
   chunk by chunk (each chunk's graph is freed before the next: memory stays flat in the rollout
   length), then the gradients are clipped and the optimiser steps.

The cache holds the recorded clean chunks without a graph, so gradients reach a chunk's moves
through the chunk's own tokens only (as in Self-Forcing's detached cache). Every random draw comes
from a generator seeded by ``(seed, step)``; ``trainer.global_step`` counts optimiser steps, so a
training step advances it by ``ppo_epochs``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sfpp.diffusion.grpo import clipped_policy_loss, group_advantages, transition_kl
from sfpp.diffusion.policy import ChunkTrajectory, StepTransition, replay_trajectory
from sfpp.diffusion.rollout import FewStepSampler, stream_rollout
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.parallelize import configure_stage_modules
from sfpp.stages.student import StudentSettings, StudentStage

__all__ = ["GRPOModule"]


class GRPOModule(StudentStage):
    """GRPO of a causal student against a video reward.

    Args:
        generator: Block-causal student (the policy), usually the extended-DMD student's EMA.
        text_encoder: Frozen prompt encoder.
        codec: Latents to pixels (the reward sees pixels).
        sampler: The student's few-step schedule.
        reward: ``reward(videos (B, 3, F, H, W) in [-1, 1], prompts) -> (B,)``, higher is better.
        optimizer: Partial optimiser of the policy.
        rollout_frames: Length of each training rollout, latent frames or seconds (``"100s"``).
        student: The settings every student stage shares (:class:`~sfpp.stages.student.StudentSettings`
            or a mapping of its fields: the Hydra node ``stage.student``); ``accumulate_grad_batches``
            ``k > 1`` makes ``k`` batches of ``P`` prompts one update of ``k x P`` (groups never span
            two batches) and needs ``ppo_epochs == 1``.
        reference: Frozen reference student of the KL term (default: a copy of ``generator`` as
            it is when the stage starts).
        group_size: Rollouts per prompt ``G >= 2``.
        transition: The stochastic moves between denoising steps (``eta`` of fresh noise) and
            to the chunk's output (``output_std``); both must be random, see :mod:`sfpp.diffusion.policy`.
        clip_range: PPO clip of the importance ratio.
        kl_weight: Weight of the per-element KL to the reference.
        ppo_epochs: Updates per batch of rollouts.
        quality_metric: Optional ``metric(videos, prompts) -> dict`` logged on validation rollouts
            next to the reward (report motion with it: a reward can be gamed by a static video).
    """

    def __init__(
        self,
        generator: CausalWanDiT,
        text_encoder: nn.Module,
        codec: Any,
        sampler: FewStepSampler,
        reward: Callable[..., torch.Tensor],
        optimizer: Callable[..., torch.optim.Optimizer],
        rollout_frames: int | str,
        student: StudentSettings | Mapping[str, Any] | None = None,
        reference: CausalWanDiT | None = None,
        group_size: int = 4,
        transition: StepTransition | None = None,
        clip_range: float = 0.2,
        kl_weight: float = 0.01,
        ppo_epochs: int = 1,
        quality_metric: Callable[..., dict[str, float]] | None = None,
    ) -> None:
        if not generator.config.causal:
            raise ValueError("GRPO trains a block-causal student (causal=true)")
        student = StudentSettings.parse(student)
        accumulate_grad_batches = student.accumulate_grad_batches
        if group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (advantages are relative within a group), got {group_size}"
            )
        if ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {ppo_epochs}")
        if accumulate_grad_batches > 1 and ppo_epochs > 1:
            raise ValueError(
                "accumulate_grad_batches > 1 needs ppo_epochs == 1 (one update per batch of rollouts)"
            )
        transition = transition or StepTransition(eta=1.0, output_std=0.05)
        if transition.eta == 0.0 or not transition.stochastic_output:
            raise ValueError(
                "GRPO needs a stochastic sampler: transition.eta > 0 and transition.output_std > 0 "
                f"(got eta={transition.eta}, output_std={transition.output_std}; see sfpp.diffusion.policy)"
            )
        rollout_frames = student.timing(codec, generator).parse_length(rollout_frames)
        super().__init__(
            generator,
            text_encoder,
            codec,
            sampler,
            student,
            rollout_frames=rollout_frames,
            default_cache_window=rollout_frames,
            quality_metric=quality_metric,
        )
        self.automatic_optimization = False
        self.save_hyperparameters(
            ignore=[
                "generator",
                "text_encoder",
                "codec",
                "sampler",
                "reward",
                "optimizer",
                "reference",
                "transition",
                "quality_metric",
                "student",
            ]
        )
        self.hparams["student"] = student.as_dict()
        self.hparams["transition_eta"] = transition.eta  # plain numbers: loggers cannot save a dataclass
        self.hparams["transition_output_std"] = transition.output_std
        self.reward = reward
        self.optimizer_factory = optimizer
        self.transition = transition
        self.reference = (reference if reference is not None else copy.deepcopy(generator)).requires_grad_(
            False
        )
        self.reference.eval()

    # -- parallelism -----------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Shard the policy, the reference and the EMA copy with FSDP2 under ``trainer=fsdp``."""
        configure_stage_modules(
            self,
            self.device_mesh,
            trained=[self.generator],
            frozen=[self.reference, self.ema.module],
            mixed_precision=self.student.mixed_precision,
            activation_checkpointing=self.student.activation_checkpointing,
        )

    # -- training --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_group(
        self, prompts: list[str], rng: torch.Generator, micro_batch: int = 0
    ) -> tuple[torch.Tensor, list[ChunkTrajectory], torch.Tensor, torch.Tensor]:
        """Roll out ``group_size`` videos per prompt with the current policy and score them.

        ``micro_batch`` is the index of the prompts among the update's ``accumulate_grad_batches``
        (their rows of the update's global batch of rollouts).

        Returns:
            ``(context, trajectories, videos, rewards)``: text embeddings of the ``P * G`` rollouts
            (group by group), their recorded chunks, decoded videos ``(P * G, 3, F', H, W)`` and
            rewards ``(P * G,)``.
        """
        group = self.hparams.group_size
        expanded = [prompt for prompt in prompts for _ in range(group)]  # P -> P * G, group by group
        context, _ = self._contexts(expanded)
        trajectories: list[ChunkTrajectory] = []
        chunks = stream_rollout(
            self.generator,
            context,
            self._new_cache(self.generator, len(expanded)),
            self.rollout_frames,
            self.student.latent_shape,
            self.sampler,
            rng,
            noise_fn=self._noise_fn(rng, len(expanded), micro_batch, self.student.accumulate_grad_batches),
            transition=self.transition,
            trajectory=trajectories,
        )
        latents = torch.cat([chunk.latents for chunk in chunks], dim=2)  # (P * G, C, F, h, w)
        videos = self.codec.decode(latents).clamp(-1, 1)
        rewards = torch.as_tensor(self.reward(videos.cpu(), expanded), dtype=torch.float32).to(self.device)
        if rewards.shape != (len(expanded),):
            raise ValueError(
                f"the reward must return one score per video ({len(expanded)},), got {tuple(rewards.shape)}"
            )
        return context, trajectories, videos, rewards

    def policy_update(
        self,
        context: torch.Tensor,
        trajectories: list[ChunkTrajectory],
        advantages: torch.Tensor,
        loss_scale: float = 1.0,
    ) -> dict[str, float]:
        """Backpropagate the GRPO objective over the recorded rollouts, chunk by chunk.

        The loss is the mean over every recorded transition of the clipped surrogate plus
        ``kl_weight`` times the KL to the reference, times ``loss_scale`` (``1 / k`` for one of
        ``k`` accumulated batches); gradients accumulate in the policy's ``.grad``.

        Returns:
            Means over the rollout of the policy loss, KL, importance ratio and clip fraction.
        """
        total = sum(chunk.num_transitions for chunk in trajectories)
        if total == 0:
            raise ValueError("the rollout recorded no stochastic transition; the sampler needs >= 2 steps")
        numel = trajectories[0].states[0][0].numel()
        batch = context.shape[0]
        sums = {"policy_loss": 0.0, "kl": 0.0, "ratio": 0.0, "clip_fraction": 0.0}
        sigmas, timesteps = self.sampler.sigmas, list(self.sampler.timesteps)
        reference_chunks = replay_trajectory(
            self.reference,
            context,
            self._new_cache(self.reference, batch),
            trajectories,
            sigmas,
            timesteps,
            self.transition,
            self.sampler.context_timestep,
        )
        for replayed in replay_trajectory(
            self.generator,
            context,
            self._new_cache(self.generator, batch),
            trajectories,
            sigmas,
            timesteps,
            self.transition,
            self.sampler.context_timestep,
        ):
            with torch.no_grad():
                reference = next(reference_chunks)
            count = replayed.trajectory.num_transitions
            if count == 0:
                continue
            old = torch.stack(replayed.trajectory.log_probs, dim=1)  # (B, T)
            policy_loss, stats = clipped_policy_loss(
                replayed.log_probs, old, advantages, self.hparams.clip_range, numel
            )
            kl = torch.stack(
                [
                    transition_kl(mean, ref_mean, std)
                    for mean, ref_mean, std in zip(
                        replayed.means, reference.means, replayed.stds, strict=True
                    )
                ]
            ).mean()
            weight = count / total  # the chunk's share of the mean over all transitions
            self.manual_backward(loss_scale * weight * (policy_loss + self.hparams.kl_weight * kl))
            sums["policy_loss"] += weight * float(policy_loss.detach())
            sums["kl"] += weight * float(kl.detach())
            sums["ratio"] += weight * float(stats["ratio"])
            sums["clip_fraction"] += weight * float(stats["clip_fraction"])
        return sums

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Sample groups, score them, and take ``ppo_epochs`` clipped policy-gradient steps."""
        began = time.perf_counter()
        optimizer = self.optimizers()
        accumulate = self.student.accumulate_grad_batches
        micro = batch_idx % accumulate
        rng = self._rng(self.global_step)
        context, trajectories, videos, rewards = self.sample_group(list(batch["prompt"]), rng, micro)
        advantages = group_advantages(rewards, self.hparams.group_size)
        batch_size = rewards.shape[0]
        for _ in range(self.hparams.ppo_epochs):
            if micro == 0:
                optimizer.zero_grad(set_to_none=True)
            stats = self.policy_update(context, trajectories, advantages, loss_scale=1.0 / accumulate)
            if micro == accumulate - 1:
                self._clip(self.generator, "policy", self.student.grad_clip_norm, batch_size)
                optimizer.step()
                self.ema.update(self.generator, self.global_step)
        self.log("train/reward", rewards.mean(), prog_bar=True, batch_size=batch_size)
        self.log(
            "train/reward_std_in_group",
            rewards.reshape(-1, self.hparams.group_size).std(dim=1).mean(),
            batch_size=batch_size,
        )
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/video_std", videos.float().std(), batch_size=batch_size)
        self.log("train/seconds_per_step", time.perf_counter() - began, batch_size=batch_size)

    # -- validation ------------------------------------------------------------------------------

    @property
    def validates(self) -> bool:
        """GRPO always validates: the reward is measured on held-out prompts."""
        return True

    def validation_metrics(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The quality metric's numbers plus the mean reward of the EMA student's videos."""
        metrics = super().validation_metrics(videos, prompts)
        metrics["reward"] = float(torch.as_tensor(self.reward(videos, prompts)).float().mean())
        return metrics

    # -- optimisation ----------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The policy's optimiser, built after sharding."""
        return self.optimizer_factory(params=[p for p in self.generator.parameters() if p.requires_grad])
