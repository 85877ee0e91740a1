"""FSDP2 sharding, activation checkpointing and the data-parallel random draws of the DMD stage.

The fast tests run in this process on a one-process gloo group. The slow test trains two DMD steps
with two CPU processes (Lightning's ModelParallelStrategy) and compares the weights with one process
on the global batch; it launches this file as a script (``python tests/test_parallelize.py OUT``),
so the test process never joins a process group of its own.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler

from factories import tiny_dmd, tiny_model
from sfpp.codecs import PixelCodec
from sfpp.diffusion import FewStepSampler
from sfpp.diffusion.reinject import NoiseReinjector
from sfpp.diffusion.rollout import stream_rollout
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.parallelize import (
    apply_activation_checkpointing,
    check_trainable_parameters_sharded,
    is_sharded,
    parallelize_model,
)
from sfpp.stages.dmd import DMDModule
from sfpp.stages.teacher import TeacherModule
from sfpp.world import WorldTextEncoder, train_prompts

PROMPTS = list(train_prompts()[::37][:8])
SAMPLER = FewStepSampler.from_steps([1000, 750, 500, 250], shift=3.0)
NETWORKS = ("generator", "critic", "ema")


def _tiny(causal: bool) -> CausalWanDiT:
    return tiny_model(causal=causal)


def _dmd(**kw) -> DMDModule:
    """A tiny DMD stage with SGD (an update proportional to the gradient shows any scale error)."""
    return tiny_dmd(**{"optimizer": lambda params: torch.optim.SGD(params, lr=0.5), "ema_decay": 0.5, **kw})


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _rollout(model: CausalWanDiT, context: torch.Tensor) -> torch.Tensor:
    """Six frames with every chunk keeping its graph; the 4-frame cache is overwritten on the way."""
    cache = model.new_kv_cache(2, 16, 16, window_frames=4)
    generator = torch.Generator().manual_seed(1)
    chunks = stream_rollout(
        model, context, cache, 6, (3, 16, 16), SAMPLER, generator, exit_steps=[1, 3, 2], grad_from_frame=0
    )
    return torch.cat([c.latents for c in chunks], dim=2)  # (B, C, F, H, W)


def _outputs_and_grads(model: CausalWanDiT, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    context = torch.randn(2, 5, 16)
    if model.config.causal:
        out = _rollout(model, context)
    else:
        out = model(torch.randn(2, 3, 4, 16, 16), torch.tensor([500.0, 300.0]), context)
    out.square().mean().backward()
    grads = {n: _full(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), {n.replace("_checkpoint_wrapped_module.", ""): g for n, g in grads.items()}


# -- parallelize_model ------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal-rollout"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_sharded_model_matches_the_unsharded_one(mesh: DeviceMesh, causal: bool, checkpointing: bool) -> None:
    torch.manual_seed(0)
    reference = _tiny(causal)
    sharded = parallelize_model(copy.deepcopy(reference), mesh, False, checkpointing)
    assert is_sharded(sharded) and all(is_sharded(block) for block in sharded.blocks)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert set(sharded.state_dict()) == set(reference.state_dict())

    out_ref, grads_ref = _outputs_and_grads(reference)
    out, grads = _outputs_and_grads(sharded)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-5, atol=1e-7, msg=name)


def test_activation_checkpointing_without_sharding_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    reference = _tiny(True)
    checkpointed = copy.deepcopy(reference)
    apply_activation_checkpointing(checkpointed)
    apply_activation_checkpointing(checkpointed)  # idempotent
    assert checkpointed.state_dict().keys() == reference.state_dict().keys()
    out_ref, grads_ref = _outputs_and_grads(reference)
    out, grads = _outputs_and_grads(checkpointed)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=0, atol=0, msg=name)


def test_settings_that_cannot_work_fail_clearly(mesh: DeviceMesh) -> None:
    with pytest.raises(ValueError, match="mixed_precision=True .* CUDA only"):
        parallelize_model(_tiny(False), mesh, mixed_precision=True, activation_checkpointing=False)
    model = parallelize_model(_tiny(False), mesh, False, False)
    with pytest.raises(ValueError, match="already sharded"):
        parallelize_model(model, mesh, False, False)
    with pytest.raises(ValueError, match="before sharding"):
        apply_activation_checkpointing(model)
    with pytest.raises(TypeError, match="shards a CausalWanDiT"):
        parallelize_model(torch.nn.Linear(2, 2), mesh, False, False)
    with pytest.raises(ValueError, match="not sharded by FSDP2: weight, bias"):
        check_trainable_parameters_sharded(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs trainer=fsdp"):
        _dmd(mixed_precision=True).configure_model()


# -- the DMD stage ---------------------------------------------------------------------------------


def test_teacher_configure_model_shards_model_ema_and_trainable_text_encoder(mesh: DeviceMesh) -> None:
    torch.manual_seed(0)
    model = tiny_model(prediction_type="flow")
    text_encoder = WorldTextEncoder(embed_dim=16)
    reference = text_encoder(PROMPTS[:2])[0]
    module = TeacherModule(
        model=model,
        text_encoder=text_encoder,
        codec=PixelCodec(),
        optimizer=torch.optim.AdamW,
        activation_checkpointing=True,
    )
    module._device_mesh = mesh
    module.configure_model()
    module.configure_model()
    for network in (module.model, module.ema.module, module.text_encoder):
        assert is_sharded(network) and all(isinstance(p, DTensor) for p in network.parameters())
    torch.testing.assert_close(module.encode_prompts(PROMPTS[:2]), reference)
    with pytest.raises(ValueError, match="needs trainer=fsdp"):
        TeacherModule(
            model=_tiny(False),
            text_encoder=WorldTextEncoder(16),
            codec=PixelCodec(),
            optimizer=torch.optim.AdamW,
            mixed_precision=True,
        ).configure_model()


def test_clip_grad_norm_handles_dtensor_gradients(mesh: DeviceMesh) -> None:
    torch.manual_seed(0)
    reference = _tiny(False)
    sharded = parallelize_model(copy.deepcopy(reference), mesh, False, False)
    _outputs_and_grads(reference)
    _outputs_and_grads(sharded)
    norm_ref = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 1e-3)
    norm = torch.nn.utils.clip_grad_norm_(list(sharded.parameters()), 1e-3)
    torch.testing.assert_close(_full(norm), norm_ref)
    for p, q in zip(reference.parameters(), sharded.parameters(), strict=True):
        torch.testing.assert_close(_full(q.grad), p.grad, rtol=1e-5, atol=1e-9)


def _as_rank(module: DMDModule, rank: int, world: int) -> None:
    strategy = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": world, "rank": rank})
    module._trainer = SimpleNamespace(strategy=strategy)


def test_each_rank_draws_its_rows_of_the_global_batch() -> None:
    """Rank r of 2 with local samples (r, r + 2) reproduces those rows of the 4-sample step."""
    module = _dmd()
    context, _ = module._contexts(PROMPTS[:4])
    with torch.no_grad():
        window, start = module._rollout_window(context, module._rng(3), keep_graph=False)
    drawn = module.reinjector(window, module._rng(4))
    for rank in (0, 1):
        _as_rank(module, rank, 2)
        with torch.no_grad():
            local, local_start = module._rollout_window(context[rank::2], module._rng(3), keep_graph=False)
        assert local_start == start
        torch.testing.assert_close(local, window[rank::2], rtol=0, atol=1e-6)
        local_drawn = module.reinjector(local, module._rng(4), *module._rows_of_global_batch(2))
        for mine, full in zip(local_drawn, drawn, strict=True):
            torch.testing.assert_close(mine, full[rank::2], rtol=0, atol=1e-6)


def test_reinjector_rows_settings() -> None:
    reinjector = NoiseReinjector()
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="together"):
        reinjector(x0, torch.Generator(), batch_slice=slice(0, 2))
    with pytest.raises(ValueError, match="selects 3 of global_batch=6"):
        reinjector(x0, torch.Generator(), batch_slice=slice(0, None, 2), global_batch=6)


def test_fsdp_trainer_config_builds_a_model_parallel_strategy(compose_train) -> None:
    cfg = compose_train(["trainer=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"], shrink=False)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, ModelParallelStrategy)
    assert trainer.strategy._data_parallel_size == 2 and trainer.strategy._tensor_parallel_size == 1
    assert trainer.precision == "32-true"


# -- two processes against one ----------------------------------------------------------------------


class _PromptList(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(PROMPTS)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"prompt": PROMPTS[index]}


class _Prompts(L.LightningDataModule):
    """Prompts in order; rank r of W gets samples r, r + W, ... (Lightning's own sampler would shuffle)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = (
            DistributedSampler(_PromptList(), num_replicas=world, rank=rank, shuffle=False)
            if world > 1
            else None
        )
        return DataLoader(_PromptList(), batch_size=self.batch_size, sampler=sampler)


CLIP = 0.03  # below the tiny model's gradient norms: clipping is active in both runs


def _train_two_steps(devices: int, batch_size: int, **kw) -> tuple[DMDModule, L.Trainer]:
    """One critic step then one generator step; ``batch_size`` is the per-process batch."""
    module = _dmd(**{"grad_clip_norm": CLIP, **kw})
    strategy = (
        ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1) if devices > 1 else "auto"
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=_Prompts(batch_size))
    return module, trainer


def _results(module: DMDModule, trainer: L.Trainer) -> dict:
    """Full (gathered) weights and the logged gradient norms; gathering is collective."""
    state = {
        name: {k: _full(v).detach().clone() for k, v in getattr(module, name).state_dict().items()}
        for name in NETWORKS
    }
    names = ("train/critic_grad_norm", "train/generator_grad_norm")
    norms = {k: float(v) for k, v in trainer.callback_metrics.items() if k in names}
    return {"state": state, "norms": norms}


#: Variables by which Lightning and torch tell a process it was launched as one rank of a job.
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK")
_LAUNCH_PREFIXES = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_", "TORCHELASTIC_", "PL_", "SUBMITIT_")


def _without_launch_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without what earlier tests of this process (Lightning runs, cluster configs) left.

    With ``LOCAL_RANK`` set, Lightning takes the processes as launched from outside and waits for a
    rank 1 that nobody starts; a stale ``MASTER_PORT`` may be in use.
    """
    return {
        key: value
        for key, value in environ.items()
        if key not in _LAUNCH_VARIABLES and not key.startswith(_LAUNCH_PREFIXES)
    }


def _free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: Two-process variants: (settings of both runs, the per-process batch and settings of the two-process
#: run). Every variant's global batch is 4 prompts, as the one-process run's.
TWO_PROCESS_MODES = {
    "sharded": ({}, 2, {"activation_checkpointing": True}),
    "accumulated": ({}, 1, {"accumulate_grad_batches": 2}),
    # the adapters' gradients are smaller (B starts at zero): a lower clip keeps clipping active
    "lora": ({"lora": {"rank": 4, "alpha": 4.0}, "grad_clip_norm": 0.002}, 2, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(TWO_PROCESS_MODES))
def test_two_processes_take_the_steps_of_one_process_with_the_global_batch(tmp_path: Path, mode: str) -> None:
    """FSDP2 over 2 processes (with checkpointing, with 2 micro-batches each, or with LoRA) = 1 process."""
    shared, _, _ = TWO_PROCESS_MODES[mode]
    began = time.perf_counter()
    out = tmp_path / "two_processes.pt"
    env = {**_without_launch_variables(os.environ), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["MASTER_PORT"] = str(_free_port())
    run = subprocess.run(
        [sys.executable, __file__, str(out), mode], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    two = torch.load(out)
    print(f"two-process run ({mode}): {time.perf_counter() - began:.1f} s")

    torch.manual_seed(0)
    module, trainer = _train_two_steps(devices=1, batch_size=4, **shared)
    one = _results(module, trainer)
    initial = _dmd(**shared).state_dict()

    assert set(one["norms"]) == {"train/critic_grad_norm", "train/generator_grad_norm"}
    print(f"gradient norms: one process {one['norms']}, two processes {two['norms']}")
    for name, value in one["norms"].items():
        clip = shared.get("grad_clip_norm", CLIP)
        assert value > clip, f"{name}={value}: the test wants clipping active"
        assert two["norms"][name] == pytest.approx(value, rel=1e-4), name
    worst = max(
        (two["state"][n][k] - w).abs().max().item() for n in NETWORKS for k, w in one["state"][n].items()
    )
    print(f"largest weight difference: {worst:.2e}")
    for network in NETWORKS:
        moved = 0
        for key, weight in one["state"][network].items():
            torch.testing.assert_close(
                two["state"][network][key], weight, rtol=0, atol=1e-5, msg=f"{network}.{key}"
            )
            moved += not torch.equal(weight, initial[f"{network}.{key}"])
        assert moved > 0, f"{network} did not change: the comparison would prove nothing"


def _resume_run(out: str, phase: str, sharded: str, stop: int) -> None:
    """Two processes, AdamW, the world's data: straight to step 4, or to ``stop`` then resumed from there."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sfpp.world import WorldDataModule

    folder = Path(out).parent / f"checkpoints_{sharded}"
    module = _dmd(
        generator_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        critic_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    callbacks = (
        [ModelCheckpoint(dirpath=folder, every_n_train_steps=stop, save_top_k=-1)] if phase == "first" else []
    )
    trainer = L.Trainer(
        max_steps=stop if phase == "first" else 4,
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=sharded == "sharded"
        ),
        logger=False,
        enable_checkpointing=phase == "first",
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    resume = str(next(folder.glob("*.ckpt"))) if phase == "resumed" else None
    trainer.fit(module, datamodule=WorldDataModule(num_frames=1, batch_size=2, seed=0), ckpt_path=resume)
    results = _results(module, trainer)
    if trainer.is_global_zero:
        torch.save(results, out)


@pytest.mark.slow
@pytest.mark.parametrize(("sharded", "stop"), [("sharded", 2), ("full", 2), ("sharded", 1)])
def test_two_processes_resume_bit_identically(tmp_path: Path, sharded: str, stop: int) -> None:
    """A 2-rank FSDP2 run stopped and resumed (sharded or full checkpoint) ends as the straight run.

    Step 0 trains the critic, step 1 the generator: a checkpoint at step 1 holds no optimiser state
    for the generator yet.
    """
    env = {**_without_launch_variables(os.environ), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    results = {}
    for phase in ("straight", "first", "resumed"):
        env["MASTER_PORT"] = str(_free_port())
        out = tmp_path / f"{phase}.pt"
        run = subprocess.run(
            [sys.executable, __file__, str(out), f"resume:{phase}:{sharded}:{stop}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        results[phase] = torch.load(out)
    for network in NETWORKS:
        for key, weight in results["straight"]["state"][network].items():
            assert torch.equal(results["resumed"]["state"][network][key], weight), f"{network}.{key}"


def _main(out: str, mode: str) -> None:
    """The two-process run (rank 0 is this process; Lightning launches rank 1 with the same argv)."""
    if mode.startswith("resume:"):
        _, phase, sharded, stop = mode.split(":")
        _resume_run(out, phase, sharded, int(stop))
        return
    shared, batch_size, settings = TWO_PROCESS_MODES[mode]
    module, trainer = _train_two_steps(devices=2, batch_size=batch_size, **shared, **settings)
    results = _results(module, trainer)
    if trainer.is_global_zero:
        torch.save(results, out)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])


def test_the_bf16_policy_keeps_timesteps_in_float32(mesh: DeviceMesh, monkeypatch) -> None:
    """Under FSDP2's bf16 compute policy the model still sees 937.5, not bf16's 936 (spacing 4 near 1000).

    The policy is built directly (the stage refuses mixed precision off CUDA); its casts are the
    same on a gloo mesh.
    """
    import sfpp.models.causal_wan as causal_wan
    from sfpp.models.parallelize import bf16_policies, shard_units

    seen = []
    original = causal_wan.sinusoidal_embedding

    def recording(timesteps, dim, *args, **kwargs):
        seen.append(timesteps.detach().clone())
        out = original(timesteps, dim, *args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(causal_wan, "sinusoidal_embedding", recording)
    torch.manual_seed(0)
    model = _tiny(True)
    shard_units(model, mesh, *bf16_policies(), reshard_after_forward=True)
    x = torch.randn(1, 3, 2, 16, 16)
    context = torch.randn(1, 5, model.config.text_dim)
    with torch.no_grad():
        out = model(x, torch.tensor([937.5]), context)
        cache = model.new_kv_cache(1, 16, 16, window_frames=2, dtype=torch.bfloat16)
        model.write_chunk(x, torch.tensor([937.5]), context, kv_cache=cache, frame_offset=0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    timesteps = [t for t in seen if isinstance(t, torch.Tensor)]
    assert len(timesteps) == 2 and all(t.dtype == torch.float32 and (t == 937.5).all() for t in timesteps)
    assert all(
        dtype == torch.float32 for dtype in seen if isinstance(dtype, torch.dtype)
    )  # into the fp32 unit


BF16_TIMESTEP_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
import sfpp.models.causal_wan as causal_wan
from sfpp.models import build_model
from sfpp.models.parallelize import bf16_policies, shard_units

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
seen = []
original = causal_wan.sinusoidal_embedding
def recording(timesteps, dim, *args, **kwargs):
    seen.append([str(timesteps.dtype), timesteps.flatten().tolist()])
    return original(timesteps, dim, *args, **kwargs)
causal_wan.sinusoidal_embedding = recording
torch.manual_seed(0)
model = build_model("tiny", causal=True, num_frames_per_chunk=2, in_channels=3, out_channels=3,
                    patch_size=(1, 4, 4), attention_backend="sdpa")
shard_units(model, init_device_mesh("cpu", (2,)), *bf16_policies(), reshard_after_forward=True)
with torch.no_grad():
    model(torch.randn(1, 3, 2, 16, 16), torch.tensor([937.5]), torch.randn(1, 5, model.config.text_dim))
dist.destroy_process_group()
with open(out, "w") as f:
    json.dump(seen, f)
"""


def test_two_processes_under_the_bf16_policy_see_float32_timesteps(tmp_path: Path) -> None:
    """The same check with two gloo processes (the FSDP2 all-gathers between them)."""
    script = tmp_path / "bf16_timestep.py"
    script.write_text(BF16_TIMESTEP_SCRIPT)
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    store = tmp_path / "store"
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(store), str(tmp_path / f"rank{rank}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == [["torch.float32", [937.5, 937.5]]]
