"""Shared fixtures: the real Hydra config, composed and shrunk for CPU tests; a one-process device mesh.

Tiny models, stages, data and trainers are built by ``tests/factories.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sfpp.utils.config_dir import find_config_dir
from sfpp.utils.resolvers import register_resolvers

register_resolvers()  # the configs' resolvers, as python -m sfpp.train registers them

CONFIG_DIR: Path = find_config_dir()

ComposeTrain = Callable[..., DictConfig]


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a module: tiny VAEs run hundreds of small convolutions, where threads
    only add overhead (10x on a busy CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Any]:
    """A one-process gloo group and its CPU device mesh, torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _shrink_for_cpu(cfg: DictConfig) -> None:
    """Make any trainer config a short single-process CPU run."""
    trainer = cfg.trainer
    trainer.accelerator = "cpu"
    trainer.devices = 1
    trainer.num_nodes = 1
    trainer.precision = "32-true"
    trainer.max_steps = 2
    trainer.log_every_n_steps = 1
    if "strategy" in trainer:
        trainer.strategy = "auto"
    if "stage" in cfg and "compile_model" in cfg.stage:
        # Compiling costs tens of seconds per batch shape; test_teacher compiles once on purpose.
        cfg.stage.compile_model = False


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[ComposeTrain]:
    """Factory composing ``conf/train.yaml`` as ``python -m sfpp.train`` would.

    Call it with a list of command-line style overrides. The result keeps its ``hydra`` node and
    is registered with ``HydraConfig`` so that ``${hydra:...}`` interpolations resolve; every path
    points into ``tmp_path``; with ``shrink=True`` (default) the trainer is a 2-step CPU run.
    """

    def _compose(overrides: Sequence[str] = (), shrink: bool = True) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "output")
            if shrink:
                _shrink_for_cpu(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


@pytest.fixture
def cfg_train(compose_train: ComposeTrain) -> DictConfig:
    """The default ``train`` config, shrunk for a CPU test."""
    return compose_train()
