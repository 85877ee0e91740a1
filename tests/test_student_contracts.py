"""What every student stage (extended DMD, GRPO) promises, written once and checked for each.

* accumulation: ``k`` batches of ``B`` prompts make the update of one batch of ``k x B``;
* exact resume: a run stopped at a checkpoint and resumed takes the weights of the straight run;
* ``configure_model`` may run twice: every network is sharded once, the optimisers hold shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from factories import cpu_trainer, tiny_dmd, tiny_grpo, tiny_model, world_data
from sfpp.models.parallelize import is_sharded
from sfpp.stages.student import StudentStage

PROMPTS = [
    "a red circle bouncing on a dark background",
    "a blue square bouncing on a dark background",
    "a green triangle bouncing on a dark background",
    "a yellow circle bouncing on a dark background",
]


class _Brightness:
    """Prefers brighter videos: a reward the policy can learn quickly."""

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return videos.float().mean(dim=(1, 2, 3, 4))


class _CountingSGD(torch.optim.SGD):
    """Plain SGD that counts its steps (it keeps no state of its own to count them)."""

    def __init__(self, params):
        super().__init__(params, lr=0.5)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


@dataclass(frozen=True)
class StageSpec:
    """How to build one student stage for the contracts and what to compare."""

    name: str
    build: Callable[..., StudentStage]
    trained: tuple[str, ...]  # networks with an optimiser, in the order of configure_optimizers
    frozen: tuple[str, ...]
    accumulate_steps: int  # updates of the accumulation run
    check_accumulated: Callable[[StudentStage], None] = lambda module: None


def _dmd(**kw: Any) -> StudentStage:
    return tiny_dmd(**{"critic_updates_per_generator": 1, **kw})


def _dmd_counts(module: StudentStage) -> None:
    generator_opt, critic_opt = module.optimizers()
    assert critic_opt.optimizer.steps == 2  # steps 0 and 2
    assert generator_opt.optimizer.steps == 1  # step 1


def _grpo(**kw: Any) -> StudentStage:
    torch.manual_seed(0)
    generator = tiny_model(causal=True, attention_backend="auto")
    return tiny_grpo(**{"generator": generator, "reward": _Brightness(), "kl_weight": 0.1, **kw})


SPECS = [
    StageSpec(
        "dmd",
        _dmd,
        trained=("generator", "critic"),
        frozen=("teacher", "ema"),
        accumulate_steps=3,
        check_accumulated=_dmd_counts,
    ),
    StageSpec("grpo", _grpo, trained=("generator",), frozen=("reference", "ema"), accumulate_steps=2),
]


def _network(module: StudentStage, name: str) -> torch.nn.Module:
    network = getattr(module, name)
    return {"critic": lambda: network.model, "ema": lambda: network.module}.get(name, lambda: network)()


def _prompt_loader(prompts: list[str], batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        [{"prompt": p} for p in prompts],
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda rows: {"prompt": [r["prompt"] for r in rows]},
    )


def _compared(module: StudentStage, spec: StageSpec) -> dict[str, dict[str, torch.Tensor]]:
    return {name: _network(module, name).state_dict() for name in (*spec.trained, "ema")}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_accumulated_batches_give_the_update_of_one_large_batch(spec: StageSpec, tmp_path: Path) -> None:
    """2 batches of 2 prompts = 1 batch of 4, every random draw dealt as for the large batch.

    Plain SGD: its update is linear in the gradient, so equal gradients give equal weights to float
    tolerance. Adam's first step is ``lr * sign(g)`` and flips on gradients near zero that the two
    summation orders round differently.
    """
    runs = {}
    for name, accumulate, batch in (("large", 1, 4), ("micro", 2, 2)):
        L.seed_everything(0)
        module = spec.build(accumulate_grad_batches=accumulate, optimizer=_CountingSGD)
        data = _prompt_loader(PROMPTS * spec.accumulate_steps, batch)  # the same prompts in the same order
        trainer = cpu_trainer(
            tmp_path / name, spec.accumulate_steps, enable_checkpointing=False, limit_val_batches=0
        )
        trainer.fit(module, train_dataloaders=data)
        assert module.global_step == spec.accumulate_steps  # updates, not batches
        runs[name] = module
    spec.check_accumulated(runs["micro"])
    large, micro = _compared(runs["large"], spec), _compared(runs["micro"], spec)
    for name, weights in large.items():
        for key in weights:
            torch.testing.assert_close(
                micro[name][key], weights[key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}"
            )
    start = _network(spec.build(), "generator").state_dict()
    assert any(not torch.equal(large["generator"][k], start[k]) for k in start)  # the updates moved it


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_an_interrupted_run_resumes_on_the_same_trajectory(spec: StageSpec, tmp_path: Path) -> None:
    L.seed_everything(0)
    straight = spec.build()
    cpu_trainer(tmp_path / "a", 5, enable_checkpointing=False).fit(straight, datamodule=world_data())

    L.seed_everything(0)
    first = spec.build()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    cpu_trainer(tmp_path / "b", 4, callbacks=[ckpt]).fit(first, datamodule=world_data())
    L.seed_everything(123)  # the resumed run must not depend on the global generator
    resumed = spec.build()
    (path,) = (tmp_path / "ckpt").glob("*.ckpt")
    cpu_trainer(tmp_path / "c", 5, enable_checkpointing=False).fit(
        resumed, datamodule=world_data(), ckpt_path=path
    )

    assert resumed.global_step == straight.global_step == 5
    a, b = _compared(straight, spec), _compared(resumed, spec)
    for name, weights in a.items():
        for key in weights:
            assert torch.allclose(weights[key], b[name][key], atol=1e-6), (name, key)
    opt_a, opt_b = straight.optimizers(), resumed.optimizers()
    opt_a, opt_b = (
        (opt_a[0] if isinstance(opt_a, list) else opt_a),
        (opt_b[0] if isinstance(opt_b, list) else opt_b),
    )
    state_a, state_b = next(iter(opt_a.optimizer.state.values())), next(iter(opt_b.optimizer.state.values()))
    assert torch.allclose(state_a["exp_avg_sq"], state_b["exp_avg_sq"], atol=1e-9)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_configure_model_shards_every_network_once(spec: StageSpec, mesh: DeviceMesh) -> None:
    module = spec.build(activation_checkpointing=True, ema_decay=0.5)
    module._device_mesh = mesh
    module.configure_model()
    module.configure_model()  # Lightning may call it again
    for name in (*spec.trained, *spec.frozen):
        network = _network(module, name)
        assert is_sharded(network) and all(isinstance(p, DTensor) for p in network.parameters()), name
    assert not any(isinstance(p, DTensor) for p in module.text_encoder.parameters())  # frozen: replicated
    optimizers = module.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    for opt, name in zip(optimizers, spec.trained, strict=True):
        params = opt.param_groups[0]["params"]
        assert params and all(isinstance(p, DTensor) for p in params)
        network = getattr(module, name)  # the critic's optimiser holds the ScoreCritic's parameters
        assert {id(p) for p in params} == {id(p) for p in network.parameters() if p.requires_grad}

    # The EMA update works shard by shard on identically sharded DTensors.
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    before = [_full(p).clone() for p in module.ema.module.parameters()]
    module.ema.update(module.generator, step=5)
    after = [_full(p) for p in module.ema.module.parameters()]
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new, old + 0.5)  # ema_decay=0.5
