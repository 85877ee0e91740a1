"""The student's few-step sampler as a stochastic policy (for GRPO).

Between two denoising steps of a chunk the few-step sampler re-noises its clean estimate ``x0`` to
the next noise level ``sigma'``. :class:`StepTransition` writes that move as a Gaussian draw

    x_next = (1 - sigma') * x0 + sigma' * (sqrt(1 - eta^2) * eps_hat + eta * eps),   eps ~ N(0, I)

where ``eps_hat = (x_t - (1 - sigma) * x0) / sigma`` is the noise the model sees in ``x_t``. So

    x_next ~ N(mean, std^2 I),  mean = (1 - sigma') * x0 + sigma' * sqrt(1 - eta^2) * eps_hat,  std = sigma' * eta

and every step has an explicit log-probability. The chunk's output, the last step's clean estimate,
is deterministic in the plain sampler (the formula's ``sigma' = 0``); with ``output_std > 0`` it is
drawn from ``N(x0, output_std^2 I)`` too. A policy gradient needs that last move: the reward is
computed on the output, and with a deterministic last step the update only moves the intermediate
states while the weights it shares with the last step drift unchecked (see "Stage 3" in
``docs/how-it-works.md``). ``eta = 1`` (the default) is exactly the sampler of
CausVid and Self-Forcing (fresh noise every step: ``mean = (1 - sigma') * x0``); ``eta = 0`` is the
deterministic DDIM-style move, which has no density. The rollout (:func:`~sfpp.diffusion.rollout.stream_rollout`)
takes the transition as a strategy object and, when asked, records each chunk's trajectory
(:class:`ChunkTrajectory`); :func:`replay_trajectory` then recomputes the log-probabilities of the
recorded moves under current weights, chunk by chunk through the same rolling KV cache, which is
what the GRPO update needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from sfpp.diffusion.schedule import add_noise, x0_from_flow

__all__ = [
    "ChunkTrajectory",
    "ReplayedChunk",
    "StepTransition",
    "gaussian_log_prob",
    "replay_trajectory",
]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under the isotropic Gaussian ``N(mean, std^2 I)``, one value per sample.

    Args:
        x: Samples ``(B, ...)``.
        mean: Means of the same shape.
        std: Standard deviation, a positive scalar (or a tensor broadcasting to ``x``).

    Returns:
        ``(B,)`` float32: the log-density summed over every non-batch element.

    Raises:
        ValueError: If the shapes differ or ``std`` is not positive.
    """
    if x.shape != mean.shape:
        raise ValueError(f"x {tuple(x.shape)} and mean {tuple(mean.shape)} must have the same shape")
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    if bool((std_t <= 0).any()):
        raise ValueError(f"std must be positive, got {std}")
    z = (x.float() - mean.float()) / std_t
    per_element = -0.5 * z.square() - torch.log(std_t) - 0.5 * math.log(2.0 * math.pi)
    return per_element.expand_as(z).reshape(x.shape[0], -1).sum(dim=1)  # (B, N) -> (B,)


@dataclass(frozen=True)
class StepTransition:
    """The move from one denoising step's clean estimate to the next step's noisy state.

    Args:
        eta: Fraction of fresh noise in ``[0, 1]``; 1 is the standard few-step sampler (and the
            most stochastic policy), 0 the deterministic DDIM-style move.
        output_std: Standard deviation of the chunk's output around the last clean estimate
            (``sigma_next = 0``); 0, the default, keeps the output deterministic.

    Raises:
        ValueError: For ``eta`` outside ``[0, 1]`` or a negative ``output_std``.
    """

    eta: float = 1.0
    output_std: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
        if self.output_std < 0.0:
            raise ValueError(f"output_std must be >= 0, got {self.output_std}")

    @property
    def stochastic_output(self) -> bool:
        """Whether the chunk's output is drawn (and has a log-probability)."""
        return self.output_std > 0.0

    def mean_and_std(
        self, x0: torch.Tensor, x_t: torch.Tensor, sigma: float, sigma_next: float
    ) -> tuple[torch.Tensor, float]:
        """Mean and standard deviation of ``x_next`` given the step's ``x_t`` and clean estimate ``x0``.

        ``sigma_next = 0`` is the chunk's output: mean ``x0``, standard deviation ``output_std``.
        """
        if sigma_next == 0.0:
            return x0, self.output_std
        if self.eta == 1.0:
            return (1.0 - sigma_next) * x0, sigma_next
        eps_hat = (x_t - (1.0 - sigma) * x0) / sigma
        mean = (1.0 - sigma_next) * x0 + sigma_next * math.sqrt(1.0 - self.eta**2) * eps_hat
        return mean, sigma_next * self.eta

    def sample(
        self, x0: torch.Tensor, x_t: torch.Tensor, sigma: float, sigma_next: float, noise: torch.Tensor
    ) -> torch.Tensor:
        """Draw ``x_next`` with the standard normal ``noise`` (same shape as ``x0``)."""
        if (
            self.eta == 1.0 and sigma_next > 0.0
        ):  # bit-identical to the plain re-noising of the few-step sampler
            return add_noise(x0, noise, sigma_next)
        mean, std = self.mean_and_std(x0, x_t, sigma, sigma_next)
        return mean + std * noise

    def log_prob(
        self, x_next: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        """Log-density ``(B,)`` of a drawn ``x_next``.

        Raises:
            ValueError: For a deterministic move (``eta = 0``, or the output with ``output_std = 0``),
                which has no density.
        """
        mean, std = self.mean_and_std(x0, x_t, sigma, sigma_next)
        if std == 0.0:
            raise ValueError(
                "a deterministic move has no log-probability; GRPO needs eta > 0 (and output_std > 0 for the output)"
            )
        return gaussian_log_prob(x_next, mean, std)


@dataclass
class ChunkTrajectory:
    """What a stochastic rollout did in one chunk (everything detached).

    Attributes:
        frame_offset: Absolute index of the chunk's first latent frame.
        states: The noisy states ``x_t`` the model saw, one per denoising step taken,
            each ``(B, C, F_chunk, H, W)``.
        steps: The schedule index of each state.
        log_probs: For every move, the log-probability ``(B,)`` of its result under the sampling
            weights: from each state to the next, then (with a stochastic output) from the last
            state to ``latents``.
        latents: The chunk's output.
        cache_input: What the clean pass wrote into the cache: ``latents``, re-noised when the
            rollout's context timestep is above 0 (``None``: ``latents``).
    """

    frame_offset: int
    states: list[torch.Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)
    latents: torch.Tensor | None = None
    cache_input: torch.Tensor | None = None

    @property
    def num_transitions(self) -> int:
        """Stochastic moves recorded in this chunk."""
        return len(self.log_probs)

    def move(self, index: int, sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """``(x_t, x_next, step, sigma_next)`` of the ``index``-th recorded move."""
        step = self.steps[index]
        if index + 1 < len(self.states):
            return self.states[index], self.states[index + 1], step, sigmas[step + 1]
        if self.latents is None:
            raise ValueError(f"chunk at frame {self.frame_offset} has no recorded output")
        return self.states[index], self.latents, step, 0.0


@dataclass
class ReplayedChunk:
    """Per-chunk output of :func:`replay_trajectory`.

    Attributes:
        trajectory: The recorded chunk.
        log_probs: ``(B, T)`` log-probabilities of the chunk's ``T`` recorded transitions under the
            replayed model (with the autograd graph when gradients are enabled).
        means: The ``T`` transition means ``(B, C, F_chunk, H, W)`` under the replayed model.
        stds: The ``T`` transition standard deviations.
    """

    trajectory: ChunkTrajectory
    log_probs: torch.Tensor
    means: list[torch.Tensor]
    stds: list[float]


def replay_trajectory(
    model: torch.nn.Module,
    context: torch.Tensor,
    cache: object,
    trajectories: list[ChunkTrajectory],
    sigmas: list[float],
    timesteps: list[float],
    transition: StepTransition,
    context_timestep: float = 0.0,
) -> Iterator[ReplayedChunk]:
    """Recompute the recorded moves of a rollout under ``model``, chunk by chunk.

    For every chunk, the model predicts ``x0`` from each recorded state (conditioned on the cache,
    as during the rollout) and the log-probability of the recorded next state is evaluated; then
    the chunk's recorded clean latents are written into ``cache`` with a gradient-free clean pass.
    Each chunk's graph is therefore independent of the others: a caller can backpropagate and free
    it before asking for the next chunk, so memory stays flat over long rollouts.

    Args:
        model: Block-causal student (the policy, or the frozen reference).
        context: Text embeddings ``(B, L_text, text_dim)``.
        cache: A fresh rolling cache of the same geometry as the rollout's.
        trajectories: The rollout's recorded chunks, in order.
        sigmas: Noise level of each schedule step.
        timesteps: Timestep of each schedule step (``sigma * 1000``).
        transition: The transition the rollout used.
        context_timestep: Timestep of the clean cache-writing pass.

    Yields:
        One :class:`ReplayedChunk` per chunk.
    """
    param = next(model.parameters())
    batch = context.shape[0]
    context = context.to(param.dtype)
    for chunk in trajectories:
        if chunk.latents is None:
            raise ValueError(f"chunk at frame {chunk.frame_offset} has no recorded latents")
        log_probs, means, stds = [], [], []
        for index in range(chunk.num_transitions):
            x_t, x_next, step, sigma_next = chunk.move(index, sigmas)
            t = torch.full((batch,), timesteps[step], device=param.device)
            flow = model(x_t, t, context, kv_cache=cache, frame_offset=chunk.frame_offset)
            x0 = x0_from_flow(flow, x_t, sigmas[step])
            mean, std = transition.mean_and_std(x0, x_t, sigmas[step], sigma_next)
            log_probs.append(gaussian_log_prob(x_next, mean, std))
            means.append(mean)
            stds.append(std)
        t = torch.full((batch,), context_timestep, device=param.device)
        cache_input = chunk.latents if chunk.cache_input is None else chunk.cache_input
        model.write_chunk(cache_input, t, context, kv_cache=cache, frame_offset=chunk.frame_offset)
        stacked = torch.stack(log_probs, dim=1) if log_probs else torch.zeros(batch, 0, device=param.device)
        yield ReplayedChunk(trajectory=chunk, log_probs=stacked, means=means, stds=stds)
