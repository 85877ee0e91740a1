"""The stochastic policy, the GRPO objective and the GRPO stage."""

import math

import pytest
import torch

from factories import tiny_grpo, tiny_model
from sfpp.diffusion.grpo import clipped_policy_loss, group_advantages, transition_kl
from sfpp.diffusion.policy import ChunkTrajectory, StepTransition, gaussian_log_prob, replay_trajectory
from sfpp.diffusion.rollout import FewStepSampler, rollout

SAMPLER = FewStepSampler.from_steps((1000, 750, 500, 250), shift=5.0)


def tiny_student(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_model(causal=True)


def recorded_rollout(model, transition, seed=0, batch=2, frames=6):
    context = torch.randn(
        batch, 5, model.text_embedding[0].in_features, generator=torch.Generator().manual_seed(seed + 1)
    )
    cache = model.new_kv_cache(batch, 16, 16, window_frames=4)
    trajectory: list[ChunkTrajectory] = []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        video = rollout(
            model,
            context,
            cache,
            frames,
            (3, 16, 16),
            SAMPLER,
            generator,
            transition=transition,
            trajectory=trajectory,
        )
    return context, trajectory, video


# -- the policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_step_log_prob_matches_an_independent_gaussian_density(eta):
    gen = torch.Generator().manual_seed(0)
    x0, x_t, noise = (torch.randn(3, 3, 2, 4, 4, generator=gen) for _ in range(3))
    sigma, sigma_next = 0.9, 0.6
    transition = StepTransition(eta)
    x_next = transition.sample(x0, x_t, sigma, sigma_next, noise)
    # independent: the mean and std written out from the formula, density from torch.distributions
    eps_hat = (x_t - (1 - sigma) * x0) / sigma
    mean = (1 - sigma_next) * x0 + sigma_next * math.sqrt(1 - eta**2) * eps_hat
    std = sigma_next * eta
    torch.testing.assert_close(x_next, mean + std * noise)
    expected = torch.distributions.Normal(mean, std).log_prob(x_next).flatten(1).sum(1)
    torch.testing.assert_close(
        transition.log_prob(x_next, x0, x_t, sigma, sigma_next), expected, rtol=1e-5, atol=1e-3
    )


def test_gaussian_log_prob_checks_its_inputs():
    with pytest.raises(ValueError, match="same shape"):
        gaussian_log_prob(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="positive"):
        gaussian_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="eta"):
        StepTransition(1.5)
    with pytest.raises(ValueError, match="output_std"):
        StepTransition(1.0, output_std=-0.1)
    with pytest.raises(ValueError, match="no log-probability"):
        StepTransition(0.0).log_prob(*(torch.zeros(1, 2),) * 3, 0.5, 0.2)
    with pytest.raises(ValueError, match="no log-probability"):  # the plain sampler's output
        StepTransition(1.0).log_prob(*(torch.zeros(1, 2),) * 3, 0.5, 0.0)


def test_the_default_transition_is_the_plain_few_step_sampler():
    model = tiny_student()
    _, trajectory, recorded = recorded_rollout(model, StepTransition(1.0))
    context = torch.randn(
        2, 5, model.text_embedding[0].in_features, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        plain = rollout(
            model,
            context,
            model.new_kv_cache(2, 16, 16, window_frames=4),
            6,
            (3, 16, 16),
            SAMPLER,
            torch.Generator().manual_seed(0),
        )
    assert torch.equal(recorded, plain)
    assert len(trajectory) == 3 and all(chunk.num_transitions == 3 for chunk in trajectory)
    assert torch.equal(torch.cat([c.latents for c in trajectory], dim=2), recorded)


@pytest.mark.parametrize("eta", [1.0, 0.7])
def test_recorded_log_probs_match_the_transition_density(eta):
    model = tiny_student()
    _, trajectory, _ = recorded_rollout(model, StepTransition(eta))
    chunk = trajectory[1]
    # the recorded move from state 0 to state 1 has the density of the Gaussian around the mean
    # computed from the model's x0 at state 0 (recomputed here with a cache of the first chunk)
    for index in range(chunk.num_transitions):
        lp = chunk.log_probs[index]
        assert lp.shape == (2,) and torch.isfinite(lp).all()
        # a log-density of a sample from N(mean, std^2): close to -numel * (log std + 0.5 log 2 pi + 0.5)
        numel = chunk.states[0][0].numel()
        std = SAMPLER.sigmas[chunk.steps[index] + 1] * eta
        expected = -numel * (math.log(std) + 0.5 * math.log(2 * math.pi) + 0.5)
        assert torch.allclose(lp, torch.full_like(lp, expected), rtol=0.05)


@pytest.mark.parametrize("output_std", [0.0, 0.05])
def test_replay_with_the_sampling_weights_reproduces_the_recorded_log_probs(output_std):
    model = tiny_student()
    transition = StepTransition(0.8, output_std=output_std)
    context, trajectory, _ = recorded_rollout(model, transition)
    cache = model.new_kv_cache(2, 16, 16, window_frames=4)
    with torch.no_grad():
        replayed = list(
            replay_trajectory(
                model, context, cache, trajectory, SAMPLER.sigmas, list(SAMPLER.timesteps), transition
            )
        )
    for chunk in replayed:
        assert chunk.log_probs.shape == (2, 3 + (output_std > 0))
        torch.testing.assert_close(
            chunk.log_probs, torch.stack(chunk.trajectory.log_probs, dim=1), rtol=0, atol=1e-3
        )


def test_a_stochastic_output_is_a_gaussian_draw_around_the_last_clean_estimate():
    model = tiny_student()
    _, plain_trajectory, plain = recorded_rollout(model, StepTransition(1.0))
    _, trajectory, noisy = recorded_rollout(model, StepTransition(1.0, output_std=0.05))
    # the first chunk sees the same noise up to its output, then the output gets its own draw
    residual = noisy[:, :, :2] - plain[:, :, :2]
    assert 0.04 < float(residual.std()) < 0.06 and abs(float(residual.mean())) < 0.01
    chunk = trajectory[0]
    assert chunk.num_transitions == 4 and torch.equal(chunk.latents, noisy[:, :, :2])
    expected = torch.distributions.Normal(plain[:, :, :2], 0.05).log_prob(noisy[:, :, :2]).flatten(1).sum(1)
    torch.testing.assert_close(chunk.log_probs[-1], expected, rtol=1e-4, atol=1e-2)
    assert len(plain_trajectory[0].log_probs) == 3


def test_replay_gradient_reaches_the_first_layer_and_chunks_are_independent():
    model = tiny_student()
    transition = StepTransition(1.0)
    context, trajectory, _ = recorded_rollout(model, transition)
    cache = model.new_kv_cache(2, 16, 16, window_frames=4)
    chunks = replay_trajectory(
        model, context, cache, trajectory, SAMPLER.sigmas, list(SAMPLER.timesteps), transition
    )
    first = next(chunks)
    first.log_probs.sum().backward()  # frees the first chunk's graph
    grad = model.patch_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    second = next(chunks)  # still replayable after the first graph is gone
    second.log_probs.sum().backward()


# -- the objective ---------------------------------------------------------------------------------


def test_group_advantages_are_standardised_within_each_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 10.0, -1.0, 0.0, 5.0, 2.0])
    advantages = group_advantages(rewards, 4).reshape(3, 4)
    torch.testing.assert_close(advantages[[0, 2]].mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages[[0, 2]].std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.equal(advantages[1], torch.zeros(4))  # equal rewards: no preference
    assert advantages[0].argmax() == 3 and advantages[2].argmin() == 0
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 5)


def test_equal_rewards_give_no_policy_update():
    model = tiny_student()
    transition = StepTransition(1.0)
    context, trajectory, _ = recorded_rollout(model, transition)
    advantages = group_advantages(torch.full((2,), 0.3), 2)
    cache = model.new_kv_cache(2, 16, 16, window_frames=4)
    for chunk in replay_trajectory(
        model, context, cache, trajectory, SAMPLER.sigmas, list(SAMPLER.timesteps), transition
    ):
        old = torch.stack(chunk.trajectory.log_probs, dim=1)
        loss, _ = clipped_policy_loss(chunk.log_probs, old, advantages, 0.2, numel=3 * 2 * 16 * 16)
        loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    numel = 10
    old = torch.zeros(2, 1)
    # ratio exp(0.5) ~ 1.65 > 1.2: clipped for the positive advantage, not for the negative one
    log_probs = torch.full((2, 1), 0.5 * numel, requires_grad=True)
    loss, stats = clipped_policy_loss(log_probs, old, torch.tensor([1.0, -1.0]), 0.2, numel)
    loss.backward()
    assert log_probs.grad[0, 0] == 0 and log_probs.grad[1, 0] > 0
    assert stats["clip_fraction"] == 1.0
    torch.testing.assert_close(stats["ratio"], torch.tensor(math.exp(0.5)))


def test_transition_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(3)
    mean, ref = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    expected = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, 0.7), torch.distributions.Normal(ref, 0.7)
        )
        .flatten(1)
        .mean(1)
    )
    torch.testing.assert_close(transition_kl(mean, ref, 0.7), expected)
    assert torch.equal(transition_kl(mean, mean, 0.7), torch.zeros(2))


# -- the stage -------------------------------------------------------------------------------------


class BrightnessReward:
    """Prefers brighter videos: a reward the policy can learn quickly."""

    def __call__(self, videos, prompts):
        return videos.float().mean(dim=(1, 2, 3, 4))


def grpo_module(reward=None, **overrides):
    return tiny_grpo(**{"generator": tiny_student(), "reward": reward or BrightnessReward(), **overrides})


def test_grpo_stage_rejects_impossible_settings():
    with pytest.raises(ValueError, match="group_size"):
        grpo_module(group_size=1)
    with pytest.raises(ValueError, match="eta"):
        grpo_module(transition=StepTransition(0.0, output_std=0.05))
    with pytest.raises(ValueError, match="output_std"):
        grpo_module(transition=StepTransition(1.0))
    with pytest.raises(ValueError, match="causal"):
        grpo_module(generator=tiny_model())


def test_grpo_raises_the_reward_it_is_given():
    """Policy-gradient steps on a learnable reward raise the mean reward of fresh rollouts."""
    module = grpo_module(group_size=8, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    module.manual_backward = lambda loss: loss.backward()
    optimizer = module.configure_optimizers()
    prompts = [
        "a red circle bouncing on a dark background",
        "a blue square bouncing on a dark background",
    ] * 2

    def mean_reward():
        return (
            sum(
                float(module.sample_group(prompts, torch.Generator().manual_seed(100 + s))[3].mean())
                for s in range(3)
            )
            / 3
        )

    before = mean_reward()
    for step in range(20):
        context, trajectories, _, rewards = module.sample_group(prompts, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        module.policy_update(context, trajectories, group_advantages(rewards, module.hparams.group_size))
        optimizer.step()
    after = mean_reward()
    assert after > before + 0.015, (before, after)


def test_kl_term_pulls_towards_the_reference():
    module = grpo_module(kl_weight=1.0)
    with torch.no_grad():  # move the policy away from its reference
        for p in module.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.manual_backward = lambda loss: loss.backward()
    context, trajectories, _, _ = module.sample_group(
        ["a red circle bouncing on a dark background"], torch.Generator().manual_seed(0)
    )
    stats = module.policy_update(context, trajectories, torch.zeros(4))
    assert stats["kl"] > 0 and stats["policy_loss"] == 0.0
    grad_norm = sum(float(p.grad.norm()) for p in module.generator.parameters() if p.grad is not None)
    assert grad_norm > 0


def test_grpo_hyperparameters_are_saveable_by_the_loggers(tmp_path):
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    module = grpo_module(transition=StepTransition(0.9, output_std=0.03))
    save_hparams_to_yaml(tmp_path / "hparams.yaml", module.hparams)
    text = (tmp_path / "hparams.yaml").read_text()
    assert "transition_eta: 0.9" in text and "transition_output_std: 0.03" in text


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_update_lowers_its_objective_on_the_group_it_came_from(sign):
    """The guarantee the slow experiment test checks on the real student, here on a tiny one: after
    one small step the GRPO loss of the recorded group is lower; a step against the gradient
    (``sign = -1``, a broken update) raises it."""
    module = grpo_module(optimizer=lambda params: torch.optim.Adam(params, lr=1e-4), kl_weight=0.1)
    module.manual_backward = lambda loss: loss.backward()
    optimizer = module.configure_optimizers()
    prompts = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]
    context, trajectories, _, rewards = module.sample_group(prompts, torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards, module.hparams.group_size)
    optimizer.zero_grad()
    before = module.policy_update(context, trajectories, advantages)
    for param in module.generator.parameters():
        if param.grad is not None:
            param.grad.mul_(sign)
    optimizer.step()
    optimizer.zero_grad()
    after = module.policy_update(context, trajectories, advantages)
    loss_before, loss_after = (s["policy_loss"] + 0.1 * s["kl"] for s in (before, after))
    assert (loss_after < loss_before) == (sign > 0), (loss_before, loss_after)


def test_accumulation_needs_one_ppo_epoch():
    with pytest.raises(ValueError, match="ppo_epochs == 1"):
        grpo_module(accumulate_grad_batches=2, ppo_epochs=2)
