import csv
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from factories import tiny_model
from sfpp.codecs import PixelCodec
from sfpp.diffusion.sampling import EulerSampler
from sfpp.diffusion.schedule import add_noise, flow_target, x0_from_flow
from sfpp.diffusion.training import MinSNRWeighting, TrainingSigmas, min_snr_weight
from sfpp.models import build_model
from sfpp.stages.draws import SUPERVISED_STREAM, step_generator
from sfpp.stages.teacher import TeacherModule
from sfpp.train import train
from sfpp.world import WorldDataModule, WorldTextEncoder
from sfpp.world.losses import ForegroundWeighting, foreground_weights


def _teacher(lr=3e-3, **kw):
    torch.manual_seed(0)
    model = tiny_model(prediction_type="flow")
    return TeacherModule(
        model=model,
        text_encoder=WorldTextEncoder(embed_dim=16),
        codec=PixelCodec(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        sampler=EulerSampler(num_steps=4, shift=3.0, guidance_scale=2.0),
        **kw,
    )


def _cpu_trainer(max_steps: int, logger=False, **kwargs) -> L.Trainer:
    """A quiet CPU trainer: no checkpoints, progress bar or model summary."""
    return L.Trainer(
        max_steps=max_steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def _losses(log_dir: Path) -> list[float]:
    (metrics,) = log_dir.rglob("metrics.csv")
    with metrics.open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_teacher_loss_falls_on_a_fixed_batch(tmp_path):
    L.seed_everything(0)
    module = _teacher()
    text_before = [p.detach().clone() for p in module.text_encoder.parameters()]
    data = WorldDataModule(num_frames=4, batch_size=8, seed=0)
    trainer = _cpu_trainer(120, CSVLogger(tmp_path), overfit_batches=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    losses = _losses(tmp_path)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.75 * first, (first, last)  # noise and sigma are redrawn every step: the floor is not 0
    # The text encoder learns with the teacher.
    assert any(
        not torch.equal(a, b) for a, b in zip(text_before, module.text_encoder.parameters(), strict=True)
    )


def test_ema_tracks_the_online_model():
    module = _teacher()
    module.ema.decay = 0.5
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.ema.module.parameters()]
    module.ema.update(module.model, step=10)
    for b, e, o in zip(before, module.ema.module.parameters(), module.model.parameters(), strict=True):
        assert torch.allclose(e, 0.5 * b + 0.5 * o)
    assert not any(p.requires_grad for p in module.ema.module.parameters())


def test_same_seed_same_samples():
    module = _teacher()
    prompts = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]
    a = module.sample_videos(prompts, 4, (16, 16), seed=3)
    b = module.sample_videos(prompts, 4, (16, 16), seed=3)
    c = module.sample_videos(prompts, 4, (16, 16), seed=4)
    assert a.shape == (2, 3, 4, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise, flow = (torch.randn(4, 3, 2, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor([0.05, 0.3, 0.7, 0.95])
    return flow, x0, noise, add_noise(x0, noise, sigma), sigma


@pytest.mark.parametrize("loss_space", ["flow", "x0"])
def test_unweighted_loss_is_the_plain_mse(loss_space):
    flow, x0, noise, x_t, sigma = _loss_inputs()
    module = _teacher(loss_space=loss_space)
    target = flow_target(x0, noise) if loss_space == "flow" else x0
    prediction = flow if loss_space == "flow" else x0_from_flow(flow, x_t, sigma)
    assert torch.allclose(module.loss(flow, x0, noise, x_t, sigma), F.mse_loss(prediction, target))


def test_min_snr_loss_is_the_same_objective_in_both_spaces():
    flow, x0, noise, x_t, sigma = _loss_inputs(1)
    x0_loss = _teacher(loss_space="x0", loss_weighting=MinSNRWeighting(5.0)).loss(flow, x0, noise, x_t, sigma)
    flow_loss = _teacher(loss_space="flow", loss_weighting=MinSNRWeighting(5.0)).loss(
        flow, x0, noise, x_t, sigma
    )
    assert torch.allclose(x0_loss, flow_loss, rtol=1e-5)
    # By hand: per-sample x0 errors weighted by min(SNR, 5) / 5.
    per_sample = (x0_from_flow(flow, x_t, sigma) - x0).square().flatten(1).mean(1)
    snr = ((1 - sigma) / sigma) ** 2  # [361, 5.44, 0.184, 0.00277]
    expected = (per_sample * snr.clamp(max=5.0) / 5.0).mean()
    assert torch.allclose(x0_loss, expected, rtol=1e-5)


def test_min_snr_weights():
    sigma = torch.tensor([0.0, 1 / (1 + 5**0.5), 0.5, 0.9, 1.0])  # SNR inf, 5, 1, 1/81, 0
    weights = min_snr_weight(sigma, gamma=5.0)
    assert torch.allclose(weights, torch.tensor([1.0, 1.0, 0.2, 1 / 405, 0.0]), atol=1e-6)
    assert torch.all(weights[1:].diff() <= 0)
    with pytest.raises(ValueError, match="gamma must be positive"):
        min_snr_weight(sigma, gamma=0.0)
    with pytest.raises(ValueError, match="gamma must be positive"):
        MinSNRWeighting(-1.0)


def _scene():
    """Two frames of a plain background (different per frame) with a 3x3 object on the first."""
    x0 = torch.zeros(1, 3, 2, 8, 8)
    x0[:, :, 0] = -0.5
    x0[:, :, 1] = torch.tensor([0.2, -0.1, 0.4])[:, None, None]
    x0[:, 0, 0, 2:5, 3:6] = 0.9
    return x0


def test_foreground_weights_mark_what_differs_from_the_frame_background():
    x0 = _scene()
    weights = foreground_weights(x0, 4.0)
    assert weights.shape == (1, 1, 2, 8, 8)
    expected = torch.ones(1, 1, 2, 8, 8)
    expected[:, :, 0, 2:5, 3:6] = 5.0
    assert torch.equal(weights, expected)
    assert torch.equal(foreground_weights(x0, 0.0), torch.ones(1, 1, 2, 8, 8))
    with pytest.raises(ValueError, match=">= 0"):
        foreground_weights(x0, -1.0)
    with pytest.raises(ValueError, match="B, C, F, H, W"):
        foreground_weights(x0[0], 1.0)
    with pytest.raises(ValueError, match="foreground_weight"):
        ForegroundWeighting(-0.5)


def test_foreground_weighted_loss_is_the_weighted_mean_of_the_x0_error():
    x0 = _scene().expand(2, -1, -1, -1, -1).clone()
    sigma = torch.tensor([0.3, 0.6])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = add_noise(x0, noise, sigma)
    error = torch.zeros_like(x0)
    error[:, :, 0, 3, 4] = 1.0  # one wrong position inside the object
    error[:, :, 1, 0, 0] = 1.0  # one wrong background position
    flow = (x_t - (x0 + error)) / sigma[:, None, None, None, None]  # the flow whose x0 estimate is x0 + error
    module = _teacher(loss_space="x0", loss_weighting=ForegroundWeighting(4.0))
    # Weighted mean per sample: (5 * 3 + 1 * 3) / (3 channels * (9 * 5 + 119 * 1)) squared errors.
    expected = torch.tensor(18.0 / (3 * (9 * 5 + 119)))
    assert torch.allclose(module.loss(flow, x0, noise, x_t, sigma), expected, rtol=1e-4)
    plain = _teacher(loss_space="x0").loss(flow, x0, noise, x_t, sigma)
    assert torch.allclose(plain, torch.tensor(6.0 / (3 * 128)), rtol=1e-4)


@pytest.mark.parametrize("bad", [[0.0], [0.0, -1.0], [0.0, 1.0, 2.0]])
def test_bad_logit_normal_levels_are_refused(bad):
    with pytest.raises(ValueError, match="logit_normal"):
        TrainingSigmas(logit_normal=bad)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_logit_normal_levels_train_the_teacher(monkeypatch):
    teacher = _teacher(timestep_sampler=TrainingSigmas(logit_normal=[0.5, 0.8]))
    drawn = []
    real = teacher.model.forward

    def spy(x_t, timestep, context):
        drawn.append(timestep / 1000.0)
        return real(x_t, timestep, context)

    monkeypatch.setattr(teacher.model, "forward", spy)
    batch = {
        "video": torch.rand(64, 3, 2, 8, 8) * 2 - 1,
        "prompt": ["a red circle bouncing on a dark background"] * 64,
    }
    torch.manual_seed(0)
    loss = teacher.training_step(batch, 0)
    assert torch.isfinite(loss)
    (sigma,) = drawn
    # the step's own generator (seed 0, step 0): the CFG dropout draw comes first
    generator = step_generator(0, SUPERVISED_STREAM, 0)
    torch.rand(64, generator=generator)
    expected = torch.sigmoid(0.5 + 0.8 * torch.randn(64, generator=generator))
    assert torch.allclose(sigma, expected, atol=1e-6)


def test_x0_target_is_what_the_x0_loss_regresses_on(monkeypatch):
    seen = {}

    def target(x0, x_t, sigma, batch):
        seen.update(x0=x0, x_t=x_t, sigma=sigma, batch=batch)
        return torch.zeros_like(x0)

    teacher = _teacher(loss_space="x0", x0_target=target)
    flows = []
    real = teacher.model.forward

    def spy(x_t, timestep, context):
        flows.append(real(x_t, timestep, context))
        return flows[-1]

    monkeypatch.setattr(teacher.model, "forward", spy)
    batch = {
        "video": torch.rand(4, 3, 2, 8, 8) * 2 - 1,
        "prompt": ["a red circle bouncing on a dark background"] * 4,
    }
    loss = teacher.training_step(batch, 0)
    assert seen["batch"] is batch and torch.equal(seen["x0"], batch["video"])
    expected = x0_from_flow(flows[0], seen["x_t"], seen["sigma"]).square().mean()  # error against zeros
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="loss_space: x0"):
        _teacher(loss_space="flow", x0_target=target)


def test_world_posterior_targets_train_on_image_batches_only(tmp_path):
    from sfpp.world import WorldPosteriorTarget

    calls = []

    class Recording(WorldPosteriorTarget):
        def __call__(self, x0, x_t, sigma, batch):
            target = super().__call__(x0, x_t, sigma, batch)
            calls.append((x0.shape[2], "layout" in batch, torch.equal(target, x0)))
            return target

    L.seed_everything(0)
    module = _teacher(loss_space="x0", x0_target=Recording())
    data = WorldDataModule(num_frames=4, batch_size=2, seed=0, image_batch_size=4, image_batches=2)
    _cpu_trainer(3, limit_val_batches=0).fit(module, datamodule=data)
    # two image batches get the posterior mean (not x0), the video batch gets x0 itself
    assert calls == [(1, True, False), (1, True, False), (4, False, True)]


def test_causal_model_is_refused():
    with pytest.raises(ValueError, match="causal=false"):
        TeacherModule(
            model=build_model("tiny", causal=True),
            text_encoder=WorldTextEncoder(16),
            codec=PixelCodec(),
            optimizer=torch.optim.AdamW,
        )


TINY_WORLD = [
    "model=tiny",
    "++model.in_channels=3",
    "++model.out_channels=3",
    "++model.patch_size=[1,4,4]",
    "text.embed_dim=16",
    "data.batch_size=2",
    "data.num_frames=4",
    "data.val_size=2",
    "stage.sampler.num_steps=2",
    "debug=fast_dev_run",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=tiny"],
        ["experiment=toy_teacher"],
        ["experiment=toy_teacher", "data.image_batches=0"],
        ["experiment=toy_teacher_long"],
    ],
)
def test_teacher_experiments_run_with_fast_dev_run(compose_train, overrides):
    cfg = compose_train([*overrides, *TINY_WORLD])
    train(cfg)


def test_tiny_experiment_trains_and_writes_samples_and_checkpoints(compose_train):
    cfg = compose_train(["experiment=tiny"], shrink=False)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_000003.png", "step_000006.png"]
    assert list((out / "samples").glob("*.mp4"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert ckpt["global_step"] == 6


def test_image_batches_train_the_teacher_and_their_frame_count_is_logged(tmp_path):
    L.seed_everything(0)
    module = _teacher()
    data = WorldDataModule(num_frames=4, batch_size=2, seed=0, image_batch_size=4, image_batches=2)
    trainer = _cpu_trainer(3, CSVLogger(tmp_path), limit_val_batches=0, log_every_n_steps=1)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer.fit(module, datamodule=data)
    (metrics,) = tmp_path.rglob("metrics.csv")
    with metrics.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/loss")]
    assert [float(row["train/clip_frames"]) for row in rows] == [1.0, 1.0, 4.0]
    assert all(not torch.equal(a, b) for a, b in zip(before, module.model.parameters(), strict=True))


def test_a_run_that_ends_within_the_image_batches_is_warned_about(tmp_path):
    module = _teacher()
    data = WorldDataModule(num_frames=4, batch_size=2, seed=0, image_batch_size=2, image_batches=5)
    trainer = _cpu_trainer(2, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="never sees a video batch"):
        trainer.fit(module, datamodule=data)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_bf16_mixed_precision_trains_on_the_cpu_with_exact_targets(tmp_path):
    """`trainer.precision=bf16-mixed` on the CPU: the model runs under bf16 autocast, the
    posterior-mean targets are still computed exactly (float64, untouched by autocast), the loss
    and the flow the loss sees are float32, and the weights stay float32 and learn."""
    from sfpp.world import WorldPosteriorTarget

    seen = []

    class Recording(WorldPosteriorTarget):
        def __call__(self, x0, x_t, sigma, batch):
            target = super().__call__(x0, x_t, sigma, batch)
            assert torch.is_autocast_enabled("cpu")
            with torch.autocast("cpu", enabled=False):
                exact = super().__call__(x0, x_t, sigma, batch)
            seen.append(torch.equal(target, exact) and target.dtype == torch.float32)
            return target

    class Checked(TeacherModule):
        def loss(self, flow, x0, noise, x_t, sigma):
            seen.append(flow.dtype == torch.float32)
            return super().loss(flow, x0, noise, x_t, sigma)

    L.seed_everything(0)
    torch.manual_seed(0)
    model = tiny_model(prediction_type="flow")
    module = Checked(
        model=model,
        text_encoder=WorldTextEncoder(embed_dim=16),
        codec=PixelCodec(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        sampler=EulerSampler(num_steps=4, shift=3.0, guidance_scale=2.0),
        loss_space="x0",
        x0_target=Recording(),
    )
    data = WorldDataModule(num_frames=4, batch_size=2, seed=0, image_batch_size=4, image_batches=2)
    before = [p.detach().clone() for p in module.model.parameters()]
    _cpu_trainer(3, limit_val_batches=0, precision="bf16-mixed").fit(module, datamodule=data)
    assert seen == [True] * 6  # (target, loss) of two image batches and one video batch
    assert all(p.dtype == torch.float32 for p in module.model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, module.model.parameters(), strict=True))


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
@pytest.mark.filterwarnings("ignore:trainer.max_steps=3 ends within")
def test_compiled_training_forward_matches_the_model_and_trains(tmp_path):
    """`stage.compile_model=true`: training steps go through one torch.compile of the model (one
    graph per batch shape; a single shape here, to compile once), which computes what the eager
    model computes; the checkpoint holds the model's weights once, under their usual names."""
    L.seed_everything(0)
    module = _teacher(loss_space="x0", compile_model=True)
    forward = module.train_forward()
    assert forward is module.train_forward() and forward is not module.model
    data = WorldDataModule(num_frames=4, batch_size=2, seed=0, image_batch_size=4, image_batches=3)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = _cpu_trainer(3, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert all(not torch.equal(a, b) for a, b in zip(before, module.model.parameters(), strict=True))
    x = torch.randn(4, 3, 1, 16, 16)  # the image batches' shape: no second compile
    sigma = torch.tensor([0.1, 0.3, 0.6, 0.9])
    context, _ = module.text_encoder(["a red circle bouncing on a dark background"] * 4)
    with torch.no_grad():
        compiled, eager = forward(x, sigma * 1000.0, context), module.model(x, sigma * 1000.0, context)
    assert torch.allclose(compiled, eager, atol=1e-4), (compiled - eager).abs().max()
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    state = torch.load(tmp_path / "compiled.ckpt", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key or "_compiled" in key for key in state)
    assert set(state) == set(module.state_dict())
    assert not _teacher().hparams.compile_model  # eager unless asked
