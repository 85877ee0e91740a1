"""The Hydra configs under conf/ and the `python -m sfpp.train` entry point."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from sfpp.callbacks import DivergenceGuard, FinalStepCheckpoint, ProgressLog
from sfpp.io.csv_log import ResumableCSVLogger
from sfpp.utils.atomic import AtomicCheckpointIO
from sfpp.utils.config_dir import find_config_dir, list_group_options
from sfpp.utils.instantiate import instantiate_callbacks, instantiate_loggers

CONFIG_DIR = find_config_dir()
ALL_YAML = sorted(CONFIG_DIR.rglob("*.yaml"))
# Experiments are complete runs, so they must compose and resolve on their own too.
SELECTABLE_GROUPS = ("model", "trainer", "callbacks", "logger", "paths", "debug", "experiment")
GROUP_OPTIONS = [(group, option) for group in SELECTABLE_GROUPS for option in list_group_options(group)]


def _resolved(cfg: DictConfig) -> dict:
    """The config without Hydra's own node, with every interpolation resolved."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
        for key, value in cfg.items()
        if key != "hydra"
    }


def _run_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PROJECT_ROOT", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, "-m", "sfpp.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(CONFIG_DIR)) for p in ALL_YAML])
def test_every_yaml_parses(path: Path) -> None:
    OmegaConf.load(path)


def test_train_config_composes(cfg_train: DictConfig) -> None:
    resolved = _resolved(cfg_train)
    assert resolved["seed"] == 0
    assert resolved["task_name"] == "train"
    assert resolved["ckpt_path"] is None
    assert "stage" not in cfg_train, "train.yaml must select no stage by default"
    assert resolved["model"]["_target_"] == "sfpp.models.build_model"
    assert resolved["model"]["flavour"] == "tiny"
    assert resolved["trainer"]["_target_"] == "lightning.pytorch.Trainer"
    assert resolved["callbacks"]["model_checkpoint"]["dirpath"].endswith("output/checkpoints")
    assert set(resolved["logger"]) == {"csv"}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(compose_train, group: str, option: str) -> None:
    # Paper-scale experiments require local weight paths: give them placeholders (never read here).
    paths = ["++wan_dir=/models/wan2.1", "++student_ckpt=/ckpt/student.ckpt"] if group == "experiment" else []
    cfg = compose_train([f"{group}={option}", *paths], shrink=False)
    _resolved(cfg)


def test_model_group_has_the_five_flavours(compose_train) -> None:
    flavours = ["tiny", "toy", "wan_1_3b", "wan_14b", "wan2_2_ti2v_5b"]
    assert list_group_options("model") == sorted(flavours)
    for flavour in flavours:
        model_cfg = compose_train([f"model={flavour}"]).model
        assert model_cfg._target_ == "sfpp.models.build_model"
        assert model_cfg.flavour == flavour
        assert model_cfg.causal is False
        assert model_cfg.num_frames_per_chunk == 3
        assert model_cfg.attention_backend == "auto"


def _assert_keys_are_arguments(node: DictConfig, where: str) -> None:
    target = hydra.utils.get_object(node._target_)
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = {key for key in node if not key.startswith("_")} - set(parameters)
    assert not unknown, f"{where}: {sorted(unknown)} are not arguments of {node._target_}"


@pytest.mark.parametrize("option", list_group_options("trainer"))
def test_trainer_keys_are_trainer_arguments(compose_train, option: str) -> None:
    _assert_keys_are_arguments(
        compose_train([f"trainer={option}"], shrink=False).trainer, f"trainer/{option}"
    )


@pytest.mark.parametrize(
    ("group", "option"),
    [("callbacks", o) for o in list_group_options("callbacks")]
    + [("logger", o) for o in list_group_options("logger")],
)
def test_named_component_keys_are_constructor_arguments(compose_train, group: str, option: str) -> None:
    cfg = compose_train([f"{group}={option}"])
    for name, node in (cfg.get(group) or {}).items():
        _assert_keys_are_arguments(node, f"{group}/{option}: {name}")


def test_model_keys_are_build_model_arguments(compose_train) -> None:
    models = importlib.import_module("sfpp.models")
    if not hasattr(models, "build_model"):
        pytest.skip("sfpp.models.build_model is not written yet")
    parameters = inspect.signature(models.build_model).parameters
    for flavour in list_group_options("model"):
        model_cfg = compose_train([f"model={flavour}"]).model
        assert {key for key in model_cfg if not key.startswith("_")} <= set(parameters)


def test_trainer_callbacks_and_loggers_instantiate(compose_train) -> None:
    cfg = compose_train(["logger=many_loggers"])
    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.logger)
    assert [type(c) for c in callbacks] == [
        FinalStepCheckpoint,
        RichProgressBar,
        DivergenceGuard,
        ProgressLog,
        LearningRateMonitor,
    ]
    assert [type(lg) for lg in loggers] == [ResumableCSVLogger, TensorBoardLogger]
    assert isinstance(loggers[0], CSVLogger)  # Lightning's, continuing its log on a resumed run

    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert isinstance(trainer, Trainer)
    assert trainer.max_steps == 2
    assert trainer.checkpoint_callback is callbacks[0]
    assert Path(trainer.checkpoint_callback.dirpath) == Path(cfg.paths.output_dir) / "checkpoints"
    assert len(trainer.loggers) == 2
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # a killed save keeps last.ckpt


def test_callbacks_none_gives_no_callbacks(compose_train) -> None:
    assert instantiate_callbacks(compose_train(["callbacks=none"]).get("callbacks")) == []


def test_debug_fast_dev_run_overrides_the_trainer(compose_train) -> None:
    cfg = compose_train(["debug=fast_dev_run"], shrink=False)
    assert cfg.trainer.fast_dev_run is True
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.task_name == "debug"


def test_cli_prints_the_composed_config(tmp_path: Path) -> None:
    result = _run_train(["--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\nmodel:\n" in f"\n{result.stdout}"
    assert "flavour: tiny" in result.stdout


def test_cli_without_a_stage_fails_clearly(tmp_path: Path) -> None:
    result = _run_train([], cwd=tmp_path)
    assert result.returncode != 0
    assert "No training stage selected" in result.stderr
    assert "stage=<name>" in result.stderr


@pytest.mark.parametrize("experiment", ["toy_teacher", "toy_ode_init", "toy_self_forcing", "toy_grpo"])
def test_stage_optimisers_are_fused_adamw(compose_train, experiment: str) -> None:
    """Every stage's AdamW runs as one fused kernel (the toy teacher's optimiser step: ~13 ms -> ~5 ms on CPU)."""
    stage = compose_train([f"experiment={experiment}"]).stage
    names = [key for key in stage if key.endswith("optimizer")]
    assert names, f"{experiment}: no optimiser in the stage config"
    weight = torch.nn.Parameter(torch.ones(3))
    for name in names:
        optimizer = hydra.utils.instantiate(stage[name])(params=[weight])
        assert isinstance(optimizer, torch.optim.AdamW), name
        assert optimizer.defaults["fused"] is True, name
        weight.grad = torch.full_like(weight, 0.5)
        optimizer.step()  # the fused CPU kernel runs
        assert torch.all(weight < 1.0), name


@pytest.mark.parametrize("experiment", ["toy_teacher", "toy_teacher_long"])
def test_toy_teacher_schedule_gives_the_images_twice_the_videos_peak_rate(
    compose_train, experiment: str
) -> None:
    """The image batches peak at the optimiser's 1e-3, the video batches after them at half of it."""
    cfg = compose_train([f"experiment={experiment}"], shrink=False)
    stage, images, steps = cfg.stage, cfg.data.image_batches, cfg.trainer.max_steps
    assert 0 < images < steps
    optimizer = hydra.utils.instantiate(stage.optimizer)(params=[torch.nn.Parameter(torch.ones(3))])
    scheduler = hydra.utils.instantiate(stage.lr_scheduler)(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs[:images]) == pytest.approx(stage.optimizer.lr)
    assert max(lrs[images:]) == pytest.approx(0.5 * stage.optimizer.lr)
    assert lrs[images - 1] < 0.1 * stage.optimizer.lr  # the image phase has decayed before the videos
