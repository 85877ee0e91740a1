import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from safetensors import safe_open

from sfpp.data.ode_pairs import (
    INDEX_FILE,
    OdePairGenerator,
    OdePairSettingsError,
    OdePairWriter,
    shard_file_name,
)
from sfpp.data.ode_pairs_data import OdePairsDataModule, OdePairsDataset
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.diffusion.sampling import EulerSampler
from sfpp.diffusion.schedule import FlowMatchSchedule, euler_step
from sfpp.models import build_model
from sfpp.ode_pairs import generate_ode_pairs
from sfpp.utils.config_dir import find_config_dir
from sfpp.world import WorldTextEncoder, train_prompts

STUDENT = FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)
LATENT = (3, 8, 8)
FRAMES = 4


def _teacher():
    torch.manual_seed(0)
    return build_model(
        "tiny",
        in_channels=3,
        out_channels=3,
        patch_size=(1, 4, 4),
        attention_backend="sdpa",
        prediction_type="x0",
    ).eval()


def _generator(teacher=None, **kw):
    settings = dict(
        sampler=EulerSampler(num_steps=3, shift=3.0, guidance_scale=2.0),
        student_sampler=STUDENT,
        latent_shape=LATENT,
        num_frames=FRAMES,
        prompts=list(train_prompts()),
        num_trajectories=5,
        shard_size=2,
        seed=0,
        batch_size=2,
        teacher_checkpoint="tiny.ckpt",
        device="cpu",
        show_progress=False,
    )
    settings.update(kw)
    return OdePairGenerator(teacher=teacher or _teacher(), text_encoder=WorldTextEncoder(16), **settings)


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in ("noisy", "clean")}


# -- EulerSampler.keep_sigmas -------------------------------------------------------------------


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args):
        self.calls += 1
        return self.model(*args)


def test_keep_sigmas_are_exact_grid_points():
    model = _Counting(_teacher())
    sampler = EulerSampler(num_steps=4, shift=3.0, guidance_scale=1.0)
    noise = torch.randn(2, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    base = FlowMatchSchedule(shift=3.0).sampling_sigmas(4).tolist()
    keep = [STUDENT.sigmas[0], STUDENT.sigmas[2], base[2] + 1e-7, STUDENT.sigmas[1], STUDENT.sigmas[3], 0.0]

    result = sampler.sample(model, noise, context, keep_sigmas=keep)
    grid = sampler.grid(keep)
    # 1.0, base[2] (within 1e-6) and 0.0 are grid points already: 3 levels inserted, 3 more calls.
    assert len(grid) == len(base) + 3 and grid == sorted(grid, reverse=True)
    assert model.calls == 4 + 3
    assert result.kept_sigmas == keep
    assert result.trajectory.shape == (2, len(keep), 3, FRAMES, 8, 8)
    assert torch.equal(result.trajectory[:, 0], noise)
    assert torch.equal(result.trajectory[:, -1], result.x0)

    # The recorded states are those of a plain Euler integration over the merged grid.
    x, states = noise, {}
    with torch.no_grad():
        for i in range(len(grid) - 1):
            states[grid[i]] = x
            x = euler_step(
                x, model.model(x, torch.full((2,), grid[i] * 1000.0), context), grid[i], grid[i + 1]
            )
    for k, sigma in enumerate(keep[1:-1], start=1):
        point = min(grid, key=lambda g, s=sigma: abs(g - s))
        assert abs(point - sigma) <= 1e-6
        assert torch.allclose(result.trajectory[:, k], states[point], atol=1e-6)


def test_without_keep_sigmas_the_grid_is_unchanged():
    model = _teacher()
    sampler = EulerSampler(num_steps=3, shift=3.0, guidance_scale=1.0)
    noise = torch.randn(1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 5, 16)
    grid = FlowMatchSchedule(shift=3.0).sampling_sigmas(3).tolist()
    assert sampler.grid() == grid
    x = noise
    with torch.no_grad():
        for i in range(3):
            x = euler_step(x, model(x, torch.full((1,), grid[i] * 1000.0), context), grid[i], grid[i + 1])
    result = sampler.sample(model, noise, context)
    assert result.trajectory is None and result.kept_sigmas == []
    assert torch.equal(result.x0, x)
    with pytest.raises(ValueError, match="keep_sigmas must lie in"):
        sampler.grid([750.0])


# -- writing ------------------------------------------------------------------------------------


def test_writer_writes_shards_and_index(tmp_path):
    generator = _generator()
    index_path = generator.run(tmp_path / "pairs")
    index = json.loads(index_path.read_text())
    assert [s["file"] for s in index["shards"]] == [shard_file_name(i) for i in range(3)]
    assert [s["num_trajectories"] for s in index["shards"]] == [2, 2, 1]
    assert index["num_trajectories"] == index["requested_trajectories"] == 5
    settings = index["settings"]
    assert settings["teacher_checkpoint"] == "tiny.ckpt"
    assert (settings["sampler_num_steps"], settings["sampler_shift"], settings["guidance_scale"]) == (
        3,
        3.0,
        2.0,
    )
    assert settings["student_sigmas"] == pytest.approx(STUDENT.sigmas)
    assert settings["latent_shape"] == list(LATENT) and settings["num_frames"] == FRAMES
    assert (
        settings["seed"] == 0
        and settings["shard_size"] == 2
        and settings["prompt_source"] == f"<list of {len(train_prompts())} prompts>"
    )

    shard = _read(tmp_path / "pairs" / "shard_00000.safetensors")
    assert shard["noisy"].shape == (2, 4, *LATENT[:1], FRAMES, *LATENT[1:])
    assert shard["clean"].shape == (2, LATENT[0], FRAMES, *LATENT[1:])
    with safe_open(str(tmp_path / "pairs" / "shard_00002.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["prompts"]) == [generator.prompt_for(4)]
    assert not list((tmp_path / "pairs").glob("*.tmp"))


def test_resume_skips_complete_shards_and_gives_identical_data(tmp_path):
    _generator().run(tmp_path / "full")

    interrupted = _generator()
    calls = {"n": 0}
    generate = interrupted.generate

    def crash_on_third_batch(prompts, noise):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return generate(prompts, noise)

    interrupted.generate = crash_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(tmp_path / "resumed")
    assert [s["index"] for s in json.loads((tmp_path / "resumed" / INDEX_FILE).read_text())["shards"]] == [
        0,
        1,
    ]

    resumed = _generator()
    batches = []
    generate_again = resumed.generate
    resumed.generate = lambda prompts, noise: batches.append(len(prompts)) or generate_again(prompts, noise)
    resumed.run(tmp_path / "resumed")
    assert batches == [1]  # only the last shard was sampled again
    for i in range(3):
        a, b = _read(tmp_path / "full" / shard_file_name(i)), _read(tmp_path / "resumed" / shard_file_name(i))
        assert torch.equal(a["noisy"], b["noisy"]) and torch.equal(a["clean"], b["clean"])


def test_mismatched_settings_are_refused(tmp_path):
    teacher = _teacher()
    _generator(teacher, num_trajectories=2).run(tmp_path)
    with pytest.raises(OdePairSettingsError) as error:
        _generator(
            teacher,
            num_trajectories=2,
            sampler=EulerSampler(num_steps=3, shift=3.0, guidance_scale=4.0),
            seed=1,
        ).run(tmp_path)
    message = str(error.value)
    assert "guidance_scale: stored 2.0, requested 4.0" in message and "seed: stored 0, requested 1" in message
    assert "num_steps" not in message
    # Same settings, more trajectories: resumes into the same directory.
    _generator(teacher, num_trajectories=4).run(tmp_path)
    assert len(OdePairsDataset(tmp_path)) == 4
    with pytest.raises(ValueError, match="not an index of ODE pairs"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / INDEX_FILE).write_text("{}")
        OdePairWriter(tmp_path / "other", {})


# -- reading ------------------------------------------------------------------------------------


def test_dataset_reads_back_the_sampler_states(tmp_path):
    generator = _generator()
    generator.run(tmp_path)
    dataset = OdePairsDataset(tmp_path)
    assert len(dataset) == 5 and dataset.student_sigmas == pytest.approx(STUDENT.sigmas)
    item = dataset[3]
    assert item["noisy"].shape == (4, LATENT[0], FRAMES, *LATENT[1:]) and item["noisy"].dtype == torch.float32
    assert item["clean"].shape == (LATENT[0], FRAMES, *LATENT[1:])
    assert item["prompt"] == generator.prompt_for(3)

    # Re-run trajectory 3 alone: the stored state k is the sampler's state at the student's sigma k.
    with torch.no_grad():
        context, _ = generator.text_encoder([item["prompt"]])
        null, _ = generator.text_encoder([""])
        result = generator.sampler.sample(
            generator.teacher, generator.noise_for(3)[None], context, null, keep_sigmas=STUDENT.sigmas
        )
    for k in range(4):
        assert torch.allclose(item["noisy"][k], result.trajectory[0, k], atol=1e-5)
    assert torch.equal(item["noisy"][0], generator.noise_for(3))
    assert torch.allclose(item["clean"], result.x0[0], atol=1e-5)


def test_datamodule_batches_and_missing_pairs_error(tmp_path):
    _generator(num_trajectories=6).run(tmp_path / "pairs")
    data = OdePairsDataModule(tmp_path / "pairs", batch_size=2, seed=0, val_fraction=0.34)
    assert len(data.train_dataset) == 4 and len(data.val_dataset) == 2
    batch = next(iter(data.train_dataloader()))
    assert batch["noisy"].shape == (2, 4, LATENT[0], FRAMES, *LATENT[1:]) and len(batch["prompt"]) == 2
    order = [b["prompt"] for b in OdePairsDataModule(tmp_path / "pairs", 2, seed=0).train_dataloader()]
    assert order == [
        b["prompt"] for b in OdePairsDataModule(tmp_path / "pairs", 2, seed=0).train_dataloader()
    ]
    assert OdePairsDataModule(tmp_path / "pairs", 2).val_dataloader() == []
    with pytest.raises(FileNotFoundError, match="python -m sfpp.ode_pairs"):
        OdePairsDataModule(tmp_path / "missing", batch_size=2)


# -- the Hydra entry ----------------------------------------------------------------------------


def _compose_ode_pairs(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="test"):
        cfg = compose(config_name="ode_pairs", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "teacher.ckpt"
    state = {"ema.module." + k: v for k, v in _teacher().state_dict().items()}
    state.update({"text_encoder." + k: v for k, v in WorldTextEncoder(16).state_dict().items()})
    torch.save({"state_dict": state}, path)
    yield path
    GlobalHydra.instance().clear()


def test_entry_point_writes_pairs_from_a_teacher_checkpoint(tmp_path, tiny_checkpoint):
    cfg = _compose_ode_pairs(
        [
            f"teacher_ckpt={tiny_checkpoint}",
            "generator.teacher.module.flavour=tiny",
            "++generator.teacher.module.in_channels=3",
            "++generator.teacher.module.out_channels=3",
            "++generator.teacher.module.patch_size=[1,4,4]",
            "generator.text_encoder.module.embed_dim=16",
            "generator.latent_shape=[3,8,8]",
            "generator.num_frames=2",
            "generator.num_trajectories=3",
            "generator.sampler.num_steps=2",
            "generator.show_progress=false",
        ]
    )
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
    assert cfg.output_dir == f"{tmp_path}/artifacts/ode_pairs/toy"
    index = json.loads(generate_ode_pairs(cfg).read_text())
    assert index["settings"]["teacher_checkpoint"] == str(tiny_checkpoint)
    assert index["settings"]["guidance_scale"] == 2.0 and index["settings"]["sampler_shift"] == 3.0
    assert len(OdePairsDataset(cfg.output_dir)) == 3


def test_paper_scale_pairs_config_composes():
    cfg = _compose_ode_pairs(["ode_pairs=wan_1_3b", "wan_dir=/models/wan"])
    generator = OmegaConf.to_container(cfg.generator, resolve=True)
    assert generator["teacher"]["path"] == "/models/wan/transformer"
    assert (generator["sampler"]["num_steps"], generator["sampler"]["shift"]) == (48, 8.0)
    assert generator["sampler"]["guidance_scale"] == 6.0
    assert generator["latent_shape"] == [16, 60, 104] and generator["num_frames"] == 21
    assert cfg.output_dir.endswith("artifacts/ode_pairs/wan_1_3b")
    world = _compose_ode_pairs([])
    assert OmegaConf.to_container(world.generator.sampler) == {
        "_target_": "sfpp.diffusion.sampling.EulerSampler",
        "num_steps": 32,
        "shift": 3.0,
        "guidance_scale": 2.0,
    }
    assert world.generator.num_frames == 8 and list(world.generator.latent_shape) == [3, 16, 16]
    GlobalHydra.instance().clear()
