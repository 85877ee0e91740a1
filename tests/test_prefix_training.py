"""Prefix-conditioned training: DMD rollouts that start from real frames, a teacher that takes them clean."""

import pytest
import torch

from factories import tiny_model
from sfpp.codecs import PixelCodec
from sfpp.diffusion.losses import flow_matching_loss
from sfpp.diffusion.prefix import PrefixTraining, given_in_window, hold_to_chunks, keep_given_clean
from sfpp.diffusion.rollout import stream_rollout, write_prefix
from sfpp.stages.teacher import TeacherModule
from sfpp.train import train
from sfpp.world import WorldDataModule, WorldTextEncoder
from test_dmd import _module
from test_dmd import _trainer as _dmd_trainer
from test_dmd_experiments import TINY_TOY_DMD, tiny_checkpoints  # noqa: F401  (a fixture)

PROMPTS = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]


def _dmd(prefix=None, **kw):
    return _module(ratio=1, prefix=prefix, **kw)


def _trainer(tmp_path, max_steps):
    return _dmd_trainer(tmp_path, max_steps, enable_checkpointing=False)


# -- the settings and helpers ----------------------------------------------------------------------


def test_held_frames_fill_whole_chunks_of_latent_frames():
    frames = torch.randn(2, 3, 1, 4, 4)
    held, count = hold_to_chunks(frames, temporal_stride=1, chunk_frames=2)
    assert held.shape == (2, 3, 2, 4, 4) and count == 1 and torch.equal(held[:, :, 1], frames[:, :, 0])
    clip = torch.randn(1, 3, 8, 4, 4)
    same, count = hold_to_chunks(clip, temporal_stride=1, chunk_frames=2)
    assert count == 0 and torch.equal(same, clip)
    # the Wan VAE (stride 4, 3-frame chunks): an image is one latent frame, held to 1 + 4 * 2 frames
    image, count = hold_to_chunks(frames[:1], temporal_stride=4, chunk_frames=3)
    assert image.shape[2] == 9 and count == 8
    clip, count = hold_to_chunks(torch.randn(1, 3, 6, 4, 4), temporal_stride=4, chunk_frames=3)
    assert clip.shape[2] == 9 and count == 3  # 6 frames need 3 latent frames = one chunk


def test_prefix_draws_are_a_pure_function_of_seed_and_step():
    settings = PrefixTraining(probability=0.5, pixel_frames=(1, 8))
    draws = [settings.draw(seed=3, step=s) for s in range(2000)]
    assert draws == [settings.draw(seed=3, step=s) for s in range(2000)]
    assert set(draws) == {0, 1, 8}
    assert 0.45 < sum(d > 0 for d in draws) / len(draws) < 0.55
    assert draws != [settings.draw(seed=4, step=s) for s in range(2000)]
    assert PrefixTraining.parse(None) is None and PrefixTraining.parse({"probability": 0.0}) is None
    assert PrefixTraining.parse({"probability": 1, "pixel_frames": [2]}).pixel_frames == (2,)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"probability": 1.5}, "probability"),
        ({"probability": 0.5, "pixel_frames": []}, "pixel_frames"),
        ({"probability": 0.5, "pixel_frames": [0]}, "pixel_frames"),
    ],
)
def test_bad_prefix_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PrefixTraining(**settings)


def test_the_window_holds_the_prefix_and_at_least_one_generated_chunk():
    assert given_in_window(prefix_frames=2, window_frames=8, chunk_frames=2) == 2
    assert given_in_window(prefix_frames=8, window_frames=8, chunk_frames=2) == 6
    assert given_in_window(prefix_frames=12, window_frames=8, chunk_frames=2) == 6


def test_given_frames_stay_clean_at_timestep_zero_and_out_of_the_loss():
    window = torch.randn(2, 3, 4, 4, 4)
    x_t = torch.randn_like(window)
    timestep = torch.tensor([500.0, 900.0])
    x, t, sigma, mask = keep_given_clean(window, x_t, timestep, timestep / 1000, given=2)
    assert torch.equal(x[:, :, :2], window[:, :, :2]) and torch.equal(x[:, :, 2:], x_t[:, :, 2:])
    assert t.tolist() == [[0, 0, 500, 500], [0, 0, 900, 900]]
    assert torch.allclose(sigma, t / 1000)
    assert mask.flatten().tolist() == [False, False, True, True]
    flow = torch.randn_like(window, requires_grad=True)
    flow_matching_loss(flow, window, torch.randn_like(window), mask=mask).backward()
    assert flow.grad[:, :, :2].abs().sum() == 0 and flow.grad[:, :, 2:].abs().sum() > 0


def test_given_frames_do_not_scale_the_dmd_gradient_of_the_generated_ones():
    """The given frames' error is 0 (the teacher returns them as they are): the normaliser leaves them out."""
    from sfpp.diffusion.losses import dmd_loss

    torch.manual_seed(0)
    generated = torch.randn(2, 3, 2, 4, 4, requires_grad=True)
    real, fake = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    dmd_loss(generated, real, fake)[0].backward()
    alone = generated.grad.clone()
    given = torch.randn(2, 3, 6, 4, 4)
    window = torch.cat([given, generated.detach()], dim=2).requires_grad_(True)
    mask = torch.ones(1, 1, 8, 1, 1, dtype=torch.bool)
    mask[:, :, :6] = False
    loss, _ = dmd_loss(
        window,
        torch.cat([given, real], 2),
        torch.cat([given, fake], 2),
        gradient_mask=mask,
        normaliser_mask=mask,
    )
    loss.backward()
    assert torch.allclose(window.grad[:, :, 6:], alone, atol=1e-7) and (window.grad[:, :, :6] == 0).all()
    window.grad = None
    dmd_loss(window, torch.cat([given, real], 2), torch.cat([given, fake], 2), gradient_mask=mask)[
        0
    ].backward()
    assert torch.allclose(window.grad[:, :, 6:], 4 * alone, atol=1e-6)  # counted, they would scale it by 8/2


# -- the DMD stage ------------------------------------------------------------------------------


def test_a_prefixed_rollout_writes_the_given_latents_then_continues_them():
    module = _dmd(prefix={"probability": 1.0, "pixel_frames": [1]})
    context, _ = module._contexts(PROMPTS)
    prefix = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    window, start = module._rollout_window(context, module._rng(5), keep_graph=False, prefix=prefix)
    assert start == 0 and window.shape == (2, 3, 4, 16, 16)
    assert torch.equal(window[:, :, :2], prefix)
    # the same as writing the prefix and streaming from there with the step's draws
    rng = module._rng(5)
    exit_step = torch.randint(0, 4, (1,), generator=rng).item()
    cache = module._new_cache(module.generator, 2)
    list(write_prefix(module.generator, context, cache, prefix, module.sampler, rng))
    with torch.no_grad():
        (chunk,) = stream_rollout(
            module.generator, context, cache, 2, (3, 16, 16), module.sampler, rng, exit_steps=[exit_step]
        )
    assert torch.allclose(window[:, :, 2:], chunk.latents, atol=1e-6)


def test_a_prefixed_generator_step_trains_on_the_generated_frames_with_the_given_ones_clean(monkeypatch):
    module = _dmd(prefix={"probability": 1.0, "pixel_frames": [1]})
    seen = []
    teacher_forward = module.teacher.forward

    def spy(x, timestep, *args, **kwargs):
        seen.append((x.detach().clone(), timestep.detach().clone()))
        return teacher_forward(x, timestep, *args, **kwargs)

    monkeypatch.setattr(module.teacher, "forward", spy)
    clips = []
    prefix_latents = module._prefix_latents

    def keep_clip(batch, step):
        clips.append(batch["video"].clone())
        return prefix_latents(batch, step)

    monkeypatch.setattr(module, "_prefix_latents", keep_clip)
    data = WorldDataModule(num_frames=2, batch_size=2, seed=0)
    _trainer(None, 2).fit(module, datamodule=data)  # step 0 critic, step 1 generator
    (x, timestep), *_ = seen
    first = clips[1][:, :, :1]  # the generator step's batch: its first frames, held to a chunk
    # the teacher's guided call takes the conditional and unconditional halves in one batch of 4
    assert timestep.shape == (4, 4) and (timestep[:, :2] == 0).all() and (timestep[:, 2:] > 0).all()
    x = x[:2]
    assert torch.allclose(x[:, :, 0], first[:, :, 0]) and torch.allclose(x[:, :, 1], first[:, :, 0])
    generator_opt = module.optimizers()[0].optimizer
    assert len(generator_opt.state) > 0


def test_an_in_chunk_prefix_conditions_the_first_chunk_as_wan2_2_ti2v_does(monkeypatch):
    """``in_first_chunk``: the image is the first frame of the first generated chunk, clean at timestep 0."""
    module = _dmd(prefix={"probability": 1.0, "pixel_frames": [1], "in_first_chunk": True})
    context, _ = module._contexts(PROMPTS)
    image = torch.rand(2, 3, 1, 16, 16) * 2 - 1  # one latent frame of the pixel codec; chunks of 2
    window, start = module._rollout_window(context, module._rng(5), keep_graph=False, prefix=image)
    assert start == 0 and window.shape == (2, 3, 4, 16, 16)
    assert torch.equal(window[:, :, :1], image)
    # the same as streaming with the image as the first chunk's given frame, with the step's draws
    rng = module._rng(5)
    exit_step = torch.randint(0, 4, (1,), generator=rng).item()
    cache = module._new_cache(module.generator, 2)
    with torch.no_grad():
        chunks = list(
            stream_rollout(
                module.generator, context, cache, 4, (3, 16, 16), module.sampler, rng,
                exit_steps=[exit_step] * 2, first_frames=image,
            )
        )  # fmt: skip
    assert torch.allclose(window, torch.cat([c.latents for c in chunks], dim=2), atol=1e-6)
    # a generator step trains with the image clean at timestep 0 for the teacher, and only 1 frame given
    seen = []
    teacher_forward = module.teacher.forward

    def spy(x, timestep, *args, **kwargs):
        seen.append(timestep.detach().clone())
        return teacher_forward(x, timestep, *args, **kwargs)

    monkeypatch.setattr(module.teacher, "forward", spy)
    _trainer(None, 2).fit(module, datamodule=WorldDataModule(num_frames=2, batch_size=2, seed=0))
    (timestep, *_) = seen
    assert timestep.shape == (4, 4) and (timestep[:, :1] == 0).all() and (timestep[:, 1:] > 0).all()
    with pytest.raises(ValueError, match=r"not fewer than a chunk \(2\); give stage.prefix.pixel_frames"):
        _dmd(prefix={"probability": 1.0, "pixel_frames": [1, 2], "in_first_chunk": True})  # refused at once


def test_prefix_training_that_never_draws_a_prefix_trains_exactly_as_without(tmp_path):
    plain = _dmd()
    _trainer(tmp_path / "a", 4).fit(plain, datamodule=WorldDataModule(num_frames=1, batch_size=2, seed=0))
    rare = _dmd(prefix={"probability": 1e-9, "pixel_frames": [1]})
    _trainer(tmp_path / "b", 4).fit(rare, datamodule=WorldDataModule(num_frames=1, batch_size=2, seed=0))
    for key, value in plain.generator.state_dict().items():
        assert torch.equal(value, rare.generator.state_dict()[key]), key
    for key, value in plain.critic.state_dict().items():
        assert torch.equal(value, rare.critic.state_dict()[key]), key


def test_prefix_training_with_clips_too_short_says_which_setting(tmp_path):
    module = _dmd(prefix={"probability": 1.0, "pixel_frames": [4]})
    with pytest.raises(ValueError, match=r"data.num_frames=4"):
        _trainer(tmp_path, 1).fit(module, datamodule=WorldDataModule(num_frames=1, batch_size=2, seed=0))
    with pytest.raises(ValueError, match="critic_windows_per_rollout"):
        _dmd(prefix={"probability": 0.5}, critic_windows_per_rollout=2)


# -- the teacher --------------------------------------------------------------------------------


def _teacher(**kw):
    torch.manual_seed(0)
    return TeacherModule(
        model=tiny_model(),
        text_encoder=WorldTextEncoder(embed_dim=16),
        codec=PixelCodec(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        loss_space="x0",
        **kw,
    )


def test_the_teacher_learns_to_take_given_frames_clean(monkeypatch):
    module = _teacher(clean_prefix_probability=1.0, clean_prefix_max_frames=3)
    seen = []
    forward = module.model.forward

    def spy(x, timestep, *args, **kwargs):
        seen.append(timestep.detach().clone())
        return forward(x, timestep, *args, **kwargs)

    monkeypatch.setattr(module.model, "forward", spy)
    batch = {"video": torch.rand(4, 3, 8, 16, 16) * 2 - 1, "prompt": PROMPTS * 2}
    torch.manual_seed(1)
    loss = module.training_step(batch, 0)
    (timestep,) = seen
    given = (timestep == 0).sum(dim=1)
    assert timestep.shape == (4, 8) and ((given >= 1) & (given <= 3)).all()
    for row, k in zip(timestep, given.tolist(), strict=True):
        assert (row[:k] == 0).all() and (row[k:] > 0).all() and torch.unique(row[k:]).numel() == 1
    # the given frames are out of the loss: the error on them does not move it
    noisy = torch.arange(8)[None] >= given[:, None]
    x0 = torch.zeros(4, 3, 8, 2, 2)
    flow = torch.randn_like(x0, requires_grad=True)
    sigma = torch.full((4,), 0.5)
    value = module.loss(flow, x0, torch.randn_like(x0), torch.randn_like(x0), sigma, noisy)
    value.backward()
    assert (flow.grad[:, :, 0] == 0).all() and torch.isfinite(loss)
    # mean over the noised frames: a uniform error gives the same loss with or without given frames
    ones = torch.ones(4, 3, 8, 2, 2)
    plain = module.loss(ones, torch.zeros_like(ones), ones, ones, sigma)
    masked = module.loss(ones, torch.zeros_like(ones), ones, ones, sigma, noisy)
    assert torch.allclose(plain, masked)


def test_the_teacher_default_noises_every_frame(monkeypatch):
    module = _teacher()
    assert module._noisy_frames(torch.zeros(2, 3, 8, 4, 4), module.step_draws(0, 2)) is None
    on = _teacher(clean_prefix_probability=1.0)
    assert (
        on._noisy_frames(torch.zeros(2, 3, 1, 4, 4), on.step_draws(0, 2)) is None
    )  # image batches: nothing to continue
    with pytest.raises(ValueError, match="clean_prefix_probability"):
        _teacher(clean_prefix_probability=2.0)


# -- the experiments ----------------------------------------------------------------------------


def test_the_prefix_teacher_experiment_fine_tunes_a_teacher_checkpoint(compose_train, tiny_checkpoints):  # noqa: F811
    teacher_ckpt, _ = tiny_checkpoints
    cfg = compose_train(
        [
            "experiment=toy_teacher_prefix",
            "model=tiny",
            "++model.in_channels=3",
            "++model.out_channels=3",
            "++model.patch_size=[1,4,4]",
            "text.module.embed_dim=16",
            f"teacher_ckpt={teacher_ckpt}",
            "data.batch_size=2",
            "data.val_size=2",
            "stage.sampler.num_steps=2",
            "stage.clean_prefix_probability=1.0",
            "stage.compile_model=false",
            "debug=fast_dev_run",
        ]
    )
    assert cfg.stage.clean_prefix_max_frames == 7 and cfg.data.image_batches == 0
    train(cfg)


def test_the_prefix_experiment_runs_with_prefixed_steps(compose_train, tiny_checkpoints):  # noqa: F811
    teacher_ckpt, student_ckpt = tiny_checkpoints
    cfg = compose_train(
        [
            "experiment=toy_prefix",
            *TINY_TOY_DMD,
            f"teacher_ckpt={teacher_ckpt}",
            f"student_ckpt={student_ckpt}",
            "data.batch_size=2",
            "data.val_size=2",
            "stage.critic_warmup_steps=0",
            "stage.critic_updates_per_generator=0",  # the one step is a generator step
            "stage.prefix.probability=1.0",
            "stage.student.val_rollout_frames=8",
            "callbacks.video_samples.num_frames=4",
            "debug=fast_dev_run",
        ]
    )
    assert list(cfg.stage.prefix.pixel_frames) == [1, 8] and cfg.data.num_frames == 8
    train(cfg)
