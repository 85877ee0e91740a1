import csv
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from factories import tiny_model
from sfpp.codecs import PixelCodec
from sfpp.data.ode_pairs import OdePairGenerator
from sfpp.data.ode_pairs_data import OdePairsDataModule
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.diffusion.sampling import EulerSampler
from sfpp.models import build_model, save_wan_weights
from sfpp.stages.ode_init import ODEInitModule, chunkwise_states
from sfpp.train import train
from sfpp.world import WorldTextEncoder, train_prompts

STUDENT = FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)


def _teacher():
    torch.manual_seed(0)
    return tiny_model().eval()


def _student(chunk=2):
    student = tiny_model(causal=True, num_frames_per_chunk=chunk)
    student.load_state_dict(_teacher().state_dict())  # the ODE init starts from the teacher's weights
    return student


def _make_pairs(path: Path, num_trajectories=8, num_frames=4, sampler=STUDENT) -> Path:
    OdePairGenerator(
        teacher=_teacher(),
        text_encoder=WorldTextEncoder(16),
        sampler=EulerSampler(num_steps=4, shift=3.0, guidance_scale=2.0),
        student_sampler=sampler,
        latent_shape=(3, 8, 8),
        num_frames=num_frames,
        prompts=list(train_prompts()),
        num_trajectories=num_trajectories,
        shard_size=4,
        batch_size=4,
        device="cpu",
        show_progress=False,
    ).run(path)
    return path


def _module(lr=3e-3, cache_window_frames=4, **kw):
    return ODEInitModule(
        generator=_student(),
        text_encoder=WorldTextEncoder(16),
        sampler=STUDENT,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        codec=PixelCodec(),
        cache_window_frames=cache_window_frames,
        **kw,
    )


def _trainer(tmp_path, **kw):
    return L.Trainer(
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


def test_chunkwise_states_take_each_chunk_from_its_step():
    noisy = torch.arange(2 * 4 * 1 * 6).float().reshape(2, 4, 1, 6, 1, 1).expand(2, 4, 1, 6, 2, 2)
    steps = torch.tensor([[0, 3, 1], [2, 2, 0]])
    timesteps = torch.tensor([1000.0, 900.0, 800.0, 700.0])
    x, t = chunkwise_states(noisy, steps, timesteps, num_frames_per_chunk=2)
    assert x.shape == (2, 1, 6, 2, 2) and t.shape == (2, 6)
    for b in range(2):
        for frame in range(6):
            k = int(steps[b, frame // 2])
            assert torch.equal(x[b, :, frame], noisy[b, k, :, frame]) and t[b, frame] == timesteps[k]
    with pytest.raises(ValueError, match="num_frames_per_chunk=4"):
        chunkwise_states(noisy, steps, timesteps, num_frames_per_chunk=4)


def test_ode_init_loss_falls_on_a_fixed_batch(tmp_path):
    L.seed_everything(0)
    data = OdePairsDataModule(_make_pairs(tmp_path / "pairs"), batch_size=8, seed=0)
    module = _module()
    _trainer(tmp_path, max_steps=60, overfit_batches=1).fit(module, datamodule=data)
    (metrics,) = tmp_path.rglob("metrics.csv")
    with metrics.open() as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)
    # The EMA follows the generator; the text encoder stays frozen.
    assert not all(
        torch.equal(a, b)
        for a, b in zip(module.ema.module.parameters(), _student().parameters(), strict=True)
    )
    assert not any(p.requires_grad for p in module.text_encoder.parameters())


def test_first_block_gets_a_finite_nonzero_gradient(tmp_path):
    data = OdePairsDataModule(_make_pairs(tmp_path, num_trajectories=2), batch_size=2)
    batch = next(iter(data.train_dataloader()))
    module = _module()
    step_index = torch.tensor([[0, 3], [1, 2]])
    module.ode_loss(batch, step_index).backward()
    grads = [p.grad for p in module.generator.blocks[0].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in module.ema.parameters())


def test_sample_videos_streams_past_the_cache_window():
    module = _module()
    prompts = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]
    a = module.sample_videos(prompts, num_frames=8, frame_size=(8, 8), seed=3)
    b = module.sample_videos(prompts, num_frames=8, frame_size=(8, 8), seed=3)
    assert a.shape == (2, 3, 8, 8, 8) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, b)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="causal=true"):
        ODEInitModule(
            generator=_teacher(),
            text_encoder=WorldTextEncoder(16),
            sampler=STUDENT,
            optimizer=torch.optim.AdamW,
        )
    with pytest.raises(ValueError, match="cache_window_frames=1"):
        _module(cache_window_frames=1)
    other = FewStepSampler.from_steps([1000, 500], shift=5.0)
    data = OdePairsDataModule(_make_pairs(tmp_path / "pairs", 2, sampler=other), batch_size=2)
    with pytest.raises(ValueError, match="make stage.sampler match"):
        _trainer(tmp_path, max_steps=1).fit(_module(), datamodule=data)


# -- configs ------------------------------------------------------------------------------------


def _tiny_checkpoint(path: Path) -> Path:
    state = {"ema.module." + k: v for k, v in _teacher().state_dict().items()}
    state.update({"text_encoder." + k: v for k, v in WorldTextEncoder(16).state_dict().items()})
    torch.save({"state_dict": state}, path)
    return path


def test_toy_ode_init_composes_and_runs_with_fast_dev_run(compose_train, tmp_path):
    cfg = compose_train(["experiment=toy_ode_init"])
    assert cfg.model.flavour == "toy" and cfg.model.causal and cfg.model.num_frames_per_chunk == 2
    assert cfg.model.prediction_type == "x0"
    assert cfg.teacher_ckpt == f"{tmp_path}/checkpoints/toy_teacher/last.ckpt"
    assert cfg.stage.generator.checkpoint == cfg.teacher_ckpt and cfg.stage.generator.prefix == "ema.module."
    assert cfg.data.path == f"{tmp_path}/artifacts/ode_pairs/toy"
    assert cfg.stage.optimizer.lr == 1e-4 and cfg.data.batch_size == 16

    ckpt = _tiny_checkpoint(tmp_path / "teacher.ckpt")
    pairs = _make_pairs(tmp_path / "pairs", num_trajectories=4)
    cfg = compose_train(
        [
            "experiment=toy_ode_init",
            "model=tiny",
            "++model.in_channels=3",
            "++model.out_channels=3",
            "++model.patch_size=[1,4,4]",
            "text.embed_dim=16",
            f"teacher_ckpt={ckpt}",
            f"data.path={pairs}",
            "data.batch_size=2",
            "callbacks.video_samples.num_frames=4",
            "debug=fast_dev_run",
        ]
    )
    train(cfg)
    assert list((Path(cfg.paths.output_dir) / "samples").glob("*.png"))


def test_ode_init_1_3b_needs_wan_dir_and_loads_the_teacher_causally(compose_train, tmp_path):
    cfg = compose_train(["experiment=ode_init_1_3b"])
    with pytest.raises(Exception, match="wan_dir"):
        OmegaConf.to_container(cfg.stage, resolve=True)

    # A tiny bidirectional "Wan" checkpoint stands in for the 1.3B weights.
    teacher = build_model("tiny", attention_backend="sdpa")
    save_wan_weights(teacher, tmp_path / "wan" / "transformer")
    cfg = compose_train(
        ["experiment=ode_init_1_3b", f"wan_dir={tmp_path / 'wan'}", "model.attention_backend=sdpa"]
    )
    resolved = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("codec", "text", "stage", "trainer")
    }
    assert (
        resolved["codec"]["path"] == f"{tmp_path}/wan/vae" and resolved["text"]["path"] == f"{tmp_path}/wan"
    )
    assert resolved["text"]["max_length"] == 512 and resolved["stage"]["optimizer"]["lr"] == 2e-6
    assert resolved["stage"]["optimizer"]["betas"] == [0.0, 0.999]
    assert resolved["trainer"]["accelerator"] == "cpu"  # compose_train shrinks the gpu trainer
    generator = hydra.utils.instantiate(cfg.stage.generator)
    assert generator.config.causal and generator.config.num_frames_per_chunk == 3
    for a, b in zip(generator.state_dict().values(), teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sampler = hydra.utils.instantiate(cfg.stage.sampler)
    assert sampler.timesteps == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
