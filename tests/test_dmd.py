import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from factories import cpu_trainer, tiny_dmd, tiny_model, world_data
from sfpp.codecs import PixelCodec
from sfpp.diffusion import FewStepSampler
from sfpp.diffusion.losses import dmd_loss, flow_matching_loss, real_and_fake_x0
from sfpp.stages.dmd import DMDModule, update_kind
from sfpp.world import WorldTextEncoder

PROMPTS = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]


def _tiny(causal):
    return tiny_model(causal=causal)


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.0, 0.999))


def _module(rollout_frames=8, window_frames=4, ratio=2, warmup=0, seed=0, optimizer=_adamw, **kw):
    return tiny_dmd(
        optimizer=optimizer,
        rollout_frames=rollout_frames,
        window_frames=window_frames,
        critic_updates_per_generator=ratio,
        critic_warmup_steps=warmup,
        seed=seed,
        **kw,
    )


def test_update_schedule():
    kinds = [update_kind(s, critic_updates_per_generator=2, critic_warmup_steps=3) for s in range(12)]
    assert kinds == ["critic"] * 3 + ["critic", "critic", "generator"] * 3
    assert [update_kind(s, 0, 0) for s in range(3)] == ["generator"] * 3


def test_dmd_gradient_reaches_generator_only_and_critic_step_leaves_it_alone():
    module = _module()
    context, null_context = module._contexts(PROMPTS)
    rng = module._rng(0)
    window, start = module._rollout_window(context, rng, keep_graph=True)
    assert window.shape == (2, 3, 4, 16, 16) and window.requires_grad and start in (0, 2, 4)
    x_t, noise, t, sigma = module.reinjector(window.detach(), rng)
    real_x0, fake_x0 = real_and_fake_x0(
        module.teacher, module.critic, x_t, t, sigma, context, null_context, 2.0
    )
    loss, metrics = dmd_loss(window, real_x0, fake_x0)
    loss.backward()
    first = module.generator.patch_embedding.weight.grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0
    assert module.generator.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.critic.parameters())
    assert torch.isfinite(metrics["dmd_grad_norm"])
    # A critic step on the detached window does not touch the generator's gradients.
    saved = first.clone()
    flow_matching_loss(module.critic(x_t, t, context), window.detach(), noise).backward()
    assert torch.equal(module.generator.patch_embedding.weight.grad, saved)
    assert module.critic.model.patch_embedding.weight.grad.abs().sum() > 0


def test_window_gradient_only_from_window_chunks():
    module = _module(rollout_frames=8, window_frames=4, window_mode="last")
    context, _ = module._contexts(PROMPTS)
    window, start = module._rollout_window(context, module._rng(3), keep_graph=False)
    assert start == 4 and not window.requires_grad


def _trainer(tmp_path, max_steps, **kw):
    return cpu_trainer(tmp_path, max_steps, **kw)


def _data():
    return world_data()


def test_optimiser_steps_follow_the_ratio(tmp_path):
    module = _module(ratio=2, warmup=1)
    _trainer(tmp_path, 7, enable_checkpointing=False).fit(module, datamodule=_data())
    generator_opt, critic_opt = module.optimizers()

    def steps(opt):
        return int(next(iter(opt.optimizer.state.values()))["step"])

    # steps 0..6: warm-up critic at 0, then (critic, critic, generator) x 2
    assert steps(generator_opt) == 2 and steps(critic_opt) == 5
    assert module.global_step == 7


def test_a_checkpoint_of_the_earlier_draw_scheme_resumes_exactly(tmp_path):
    """Checkpoints written before the student stages drew from step_generator keep their scheme."""
    from sfpp.stages.student import LEGACY_DRAWS, STEP_DRAWS

    assert _module()._rng(3).initial_seed() != torch.Generator().manual_seed(3).initial_seed()
    L.seed_everything(0)
    straight = _module(ratio=1)
    straight.draws = LEGACY_DRAWS  # the whole run as the earlier code drew it
    _trainer(tmp_path / "a", 5, enable_checkpointing=False).fit(straight, datamodule=_data())

    L.seed_everything(0)
    first = _module(ratio=1)
    first.draws = LEGACY_DRAWS
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path / "b", 4, callbacks=[ckpt]).fit(first, datamodule=_data())
    (path,) = (tmp_path / "ckpt").glob("*.ckpt")
    payload = torch.load(path, weights_only=True)
    assert payload.pop("draws") == LEGACY_DRAWS
    torch.save(payload, path)  # a checkpoint as the earlier code wrote it: no "draws" entry

    L.seed_everything(0)
    resumed = _module(ratio=1)
    assert resumed.draws == STEP_DRAWS
    _trainer(tmp_path / "c", 5, enable_checkpointing=False).fit(resumed, datamodule=_data(), ckpt_path=path)
    assert resumed.draws == LEGACY_DRAWS
    for name in ("generator", "critic", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name

    L.seed_everything(0)
    current = _module(ratio=1)  # the current scheme takes other steps from step 0 on
    _trainer(tmp_path / "d", 5, enable_checkpointing=False).fit(current, datamodule=_data())
    a, b = straight.generator.state_dict(), current.generator.state_dict()
    assert not all(torch.equal(a[key], b[key]) for key in a)


def test_lengths_in_seconds_and_bad_settings():
    module = _module(rollout_frames="7s", window_frames=4, fps=1.0)  # pixel codec: 1 frame per latent frame
    assert module.rollout_frames == 8 - 8 % 2 and module.window_frames == 4
    with pytest.raises(ValueError, match="window_frames=8 is longer than rollout_frames=4"):
        _module(rollout_frames=4, window_frames=8)
    with pytest.raises(ValueError, match="bidirectional teacher"):
        DMDModule(
            generator=_tiny(False),
            teacher=_tiny(False),
            text_encoder=WorldTextEncoder(16),
            codec=PixelCodec(),
            sampler=FewStepSampler(timesteps=(1000.0,)),
            generator_optimizer=torch.optim.AdamW,
            critic_optimizer=torch.optim.AdamW,
            rollout_frames=4,
            window_frames=4,
            student={"latent_shape": (3, 16, 16)},
        )


def test_validation_scores_long_rollouts(tmp_path):
    calls = []

    def metric(videos, prompts):
        calls.append(tuple(videos.shape))
        return {"clean_frame_fraction": 0.5}

    module = _module(quality_metric=metric, val_rollout_frames=12)
    trainer = _trainer(tmp_path, 1, enable_checkpointing=False, limit_val_batches=1, val_check_interval=1)
    trainer.fit(module, datamodule=_data())
    assert calls and set(calls) == {(2, 3, 12, 16, 16)}
    assert float(trainer.callback_metrics["val/clean_frame_fraction"]) == 0.5
    # gradients are freed after every update (the other network's update needs the memory)
    assert all(p.grad is None for p in [*module.generator.parameters(), *module.critic.parameters()])


def test_critic_groups_never_span_a_generator_update():
    from sfpp.stages.dmd import critic_group

    # warm-up 3, then (critic x 4, generator): groups of at most 3 within each run of critic steps
    groups = {s: critic_group(s, 4, 3, 3) for s in range(13) if update_kind(s, 4, 3) == "critic"}
    assert groups[0] == (0, 0, 3) and groups[2] == (0, 2, 3)
    assert groups[3] == (3, 0, 3) and groups[5] == (3, 2, 3)
    assert groups[6] == (6, 0, 1)  # the fourth critic step of the cycle is a group of its own
    assert groups[8] == (8, 0, 3) and groups[11] == (11, 0, 1)
    for step, (first, index, size) in groups.items():
        members = range(first, first + size)
        assert step == first + index and all(update_kind(m, 4, 3) == "critic" for m in members)
    assert critic_group(5, 4, 3, 1) == (5, 0, 1)
    with pytest.raises(ValueError, match="generator step"):
        critic_group(7, 4, 3, 2)
    with pytest.raises(ValueError, match=">= 1"):
        _module(critic_windows_per_rollout=0)


@pytest.mark.parametrize("exit_step_draw", ["per_rollout", "per_chunk"])
def test_shared_critic_windows_are_windows_of_one_causal_rollout(exit_step_draw):
    """Each shared window equals the same frames of a fresh rollout to the window's end."""
    from sfpp.diffusion.rollout import stream_rollout

    module = _module(
        rollout_frames=12, window_frames=4, critic_windows_per_rollout=3, exit_step_draw=exit_step_draw
    )
    context, _ = module._contexts(PROMPTS)
    windows = module._shared_critic_windows(5, 3, context)
    rng = module._rng(5)
    starts = [module.window_sampler.sample(12, rng) for _ in range(3)]
    assert [start for _, start in windows] == starts
    end = max(starts) + 4
    if exit_step_draw == "per_rollout":  # one draw shared by every chunk
        exit_steps = torch.randint(0, 4, (1,), generator=rng).tolist() * (end // 2)
    else:
        exit_steps = torch.randint(0, 4, (end // 2,), generator=rng).tolist()
    state = rng.get_state()
    for window, start in windows:
        assert window.shape == (2, 3, 4, 16, 16) and not window.requires_grad
        # A rollout of just this window's end, with the same draws, gives the same frames (causality).
        rng.set_state(state)
        chunks = stream_rollout(
            module.generator,
            context,
            module._new_cache(module.generator, 2),
            start + 4,
            module.student.latent_shape,
            module.sampler,
            rng,
            exit_steps=exit_steps[: (start + 4) // 2],
            grad_from_frame=start + 4,
        )
        fresh = torch.cat([c.latents for c in chunks], dim=2)[:, :, start:]  # (B, C, 4, h, w)
        torch.testing.assert_close(window, fresh, rtol=1e-5, atol=1e-6)


def test_shared_critic_rollouts_train_like_fresh_ones_at_a_fraction_of_the_rollouts(tmp_path, monkeypatch):
    """Groups of 2: half the critic rollouts, the same schedule, finite losses; k = 1 is the old path."""
    calls = []
    original = DMDModule._shared_critic_windows

    def counting(self, first_step, size, context):
        calls.append((first_step, size))
        return original(self, first_step, size, context)

    monkeypatch.setattr(DMDModule, "_shared_critic_windows", counting)
    shared = _module(rollout_frames=8, ratio=4, warmup=2, critic_windows_per_rollout=2)
    _trainer(tmp_path, 7, enable_checkpointing=False).fit(shared, datamodule=_data())
    # steps 0-1 warm-up (one group), 2-5 critic (two groups), 6 generator
    assert calls == [(0, 2), (2, 2), (4, 2)]
    assert shared._critic_rollout is None
    plain = _module(rollout_frames=8, ratio=4, warmup=2)
    _trainer(tmp_path, 7, enable_checkpointing=False).fit(plain, datamodule=_data())
    assert len(calls) == 3  # the default never shares
    for module in (shared, plain):
        generator_opt, critic_opt = module.optimizers()
        assert int(next(iter(critic_opt.optimizer.state.values()))["step"]) == 6
        assert all(torch.isfinite(p).all() for p in module.critic.parameters())


def test_resume_inside_a_critic_group_continues_the_same_trajectory(tmp_path):
    """A run resumed between two critic steps of one shared rollout recomputes the same rollout."""
    kw = {"ratio": 3, "critic_windows_per_rollout": 2}
    L.seed_everything(0)
    straight = _module(**kw)
    _trainer(tmp_path / "a", 7, enable_checkpointing=False).fit(straight, datamodule=_data())
    L.seed_everything(0)
    first = _module(**kw)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    _trainer(tmp_path / "b", 5, callbacks=[ckpt]).fit(first, datamodule=_data())  # stops inside group 4-5
    L.seed_everything(0)
    resumed = _module(**kw)
    (path,) = (tmp_path / "ckpt").glob("*.ckpt")
    _trainer(tmp_path / "c", 7, enable_checkpointing=False).fit(resumed, datamodule=_data(), ckpt_path=path)
    for name in ("generator", "critic", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)


def test_accumulation_rejects_bad_settings():
    with pytest.raises(ValueError, match="accumulate_grad_batches must be >= 1"):
        _module(accumulate_grad_batches=0)
    with pytest.raises(ValueError, match="cannot be combined"):
        _module(accumulate_grad_batches=2, critic_windows_per_rollout=2)


@pytest.mark.parametrize(("exit_step_draw", "distinct"), [("per_rollout", {1}), ("per_chunk", {2, 3, 4})])
def test_exit_steps_are_drawn_once_per_rollout_or_once_per_chunk(monkeypatch, exit_step_draw, distinct):
    import sfpp.stages.dmd as dmd

    seen = []
    original = dmd.stream_rollout

    def spy(*args, **kwargs):
        seen.append(list(kwargs["exit_steps"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(dmd, "stream_rollout", spy)
    module = _module(rollout_frames=16, window_frames=4, exit_step_draw=exit_step_draw)
    context, _ = module._contexts(PROMPTS)
    for step in range(12):
        module._rollout_to(context, module._rng(step), 16, grad_from_frame=16)
    assert all(len(steps) == 8 for steps in seen)
    assert {len(set(steps)) for steps in seen} <= distinct and len({s for steps in seen for s in steps}) > 1
    with pytest.raises(ValueError, match="exit_step_draw"):
        _module(exit_step_draw="per_window")


def test_a_generator_step_trains_the_text_path_as_every_other_weight():
    """The DMD generator step reaches the text embedding and every block's cross-attention K/V."""
    module = _module(rollout_frames=8, window_frames=4)
    context, null_context = module._contexts(PROMPTS)
    window, _ = module._rollout_window(context, module._rng(3), keep_graph=True)
    x_t, _, timestep, sigma = module.reinjector(window.detach(), module._rng(4))
    real_x0, fake_x0 = real_and_fake_x0(
        module.teacher, module.critic, x_t, timestep, sigma, context, null_context, 2.0
    )
    dmd_loss(window, real_x0, fake_x0)[0].backward()
    missing = [n for n, p in module.generator.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []
