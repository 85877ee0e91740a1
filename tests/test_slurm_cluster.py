"""A real SLURM: the documented command submitted, requeued by USR2 and by preemption, resumed bit for bit.

Needs the one-node cluster of ``tests/slurm/local_slurm.sh`` (``make slurm`` starts it, ``make
test-full`` calls that first; ``make slurm-stop`` stops it). Skipped, with the reason, where no
``sinfo`` answers. Each run here is the command of the paper-scale how-to in its CPU form::

    python -m sfpp.train -m hydra/launcher=slurm trainer=cpu hydra.launcher.cpus_per_task=1 \\
        hydra.launcher.mem_gb=2 ... ckpt_path=last

and its final checkpoint (weights, EMA, optimiser state, step) is compared with an uninterrupted
run of the same overrides on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_dmd_experiments import tiny_checkpoints  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(os.environ.get("SLURM_CONF") or ROOT / ".slurm" / "slurm.conf")


def _slurm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    return env | {"SLURM_CONF": str(CONF), "OMP_NUM_THREADS": "1"}


def _cluster_state() -> str | None:
    """The node's state, or why there is no cluster."""
    if shutil.which("sinfo") is None:
        return "no sinfo: run `make slurm` (installs and starts a one-node SLURM)"
    if not CONF.is_file():
        return f"no {CONF}: run `make slurm`"
    result = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=_slurm_env(), timeout=20, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        return f"sinfo does not answer ({result.stderr.strip()[:200]}): run `make slurm`"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    why = _cluster_state()
    if why is not None:
        pytest.skip(why)


#: The stages run on the cluster: the teacher (experiment=tiny), ODE init, extended DMD and GRPO on tiny models.
STAGES = ("teacher", "ode_init", "dmd", "grpo")


def _stage_overrides(stage: str, checkpoints: tuple[Path, Path]) -> list[str]:
    if stage == "teacher":
        return ["experiment=tiny", "data.num_frames=4"]
    from test_dmd_experiments import TINY_TOY_DMD

    teacher_ckpt, student_ckpt = checkpoints
    if stage == "ode_init":  # pairs of a tiny teacher, made once per test
        from test_ode_init import _make_pairs, _tiny_checkpoint

        folder = teacher_ckpt.parent
        if not (folder / "pairs").exists():
            _tiny_checkpoint(folder / "ode_teacher.ckpt")
            _make_pairs(folder / "pairs", num_trajectories=8)
        return [
            "experiment=toy_ode_init",
            *TINY_TOY_DMD[:4],
            "text.embed_dim=16",
            f"teacher_ckpt={folder / 'ode_teacher.ckpt'}",
            f"data.path={folder / 'pairs'}",
            "data.batch_size=2",
            "trainer.precision=32-true",
        ]
    if stage == "grpo":  # toy_grpo starts from the EMA weights of a DMD checkpoint
        ema = student_ckpt.with_name("student_ema.ckpt")
        state = torch.load(student_ckpt, weights_only=True)["state_dict"]
        torch.save({"state_dict": {k.replace("generator.", "ema.module."): v for k, v in state.items()}}, ema)
        return [
            "experiment=toy_grpo",
            *TINY_TOY_DMD[:4],
            "text.module.embed_dim=16",
            f"teacher_ckpt={teacher_ckpt}",
            f"student_ckpt={ema}",
            "data.batch_size=2",
            "stage.group_size=2",
            "stage.rollout_frames=4",
            "stage.student.val_rollout_frames=4",
            "trainer.precision=32-true",
        ]
    return [
        "experiment=toy_extend",
        *TINY_TOY_DMD,
        f"teacher_ckpt={teacher_ckpt}",
        f"student_ckpt={student_ckpt}",
        "data.batch_size=2",
        "stage.critic_warmup_steps=2",
        "stage.rollout_frames=8",
        "stage.window_frames=4",
        "stage.student.cache_window_frames=4",
        "stage.quality_metric=null",
        "trainer.precision=32-true",
    ]


def _overrides(tmp_path: Path, steps: int, stage: str = "teacher", checkpoints=None) -> list[str]:
    return [
        *_stage_overrides(stage, checkpoints),
        f"paths.root_dir={tmp_path}",
        f"trainer.max_steps={steps}",
        "++trainer.val_check_interval=1000",
        "++trainer.limit_val_batches=0",
        "callbacks.video_samples=null",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.save_top_k=-1",
        "ckpt_path=last",
    ]


def _local(
    tmp_path: Path, steps: int, stage: str = "teacher", checkpoints=None, extra: tuple[str, ...] = ()
) -> Path:
    """The uninterrupted run: the same overrides, no launcher; returns its last.ckpt."""
    folder = tmp_path / "local"
    command = [
        sys.executable,
        "-m",
        "sfpp.train",
        *_overrides(folder, steps, stage, checkpoints),
        f"hydra.run.dir={folder}/run",
        f"callbacks.model_checkpoint.dirpath={folder}/ckpt",
        *extra,
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=_slurm_env(), timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "ckpt" / "last.ckpt"


def _submit(
    tmp_path: Path, steps: int, stage: str = "teacher", checkpoints=None, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """The documented command, CPU form: the submitter waits for the job (and its requeues)."""
    folder = tmp_path / "slurm"
    command = [
        sys.executable,
        "-m",
        "sfpp.train",
        "--multirun",
        "hydra/launcher=slurm",
        "trainer=cpu",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=20",
        "hydra.launcher.signal_delay_s=30",
        f"hydra.sweep.dir={folder}/multirun",
        *_overrides(folder, steps, stage, checkpoints),
        f"callbacks.model_checkpoint.dirpath={folder}/ckpt",
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_slurm_env()
    )


def _step(path: Path) -> int:
    try:
        if path.is_dir():  # a sharded checkpoint: its metadata beside the shards
            return int(torch.load(path / "meta.pt", map_location="cpu", weights_only=True)["global_step"])
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # being written
        return -1


def _wait_for_checkpoint(folder: Path, at_least: int, process: subprocess.Popen, timeout: float = 300) -> int:
    last = folder / "ckpt" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0][-3000:]
        if last.exists() and (step := _step(last)) >= at_least:
            return step
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {at_least} within {timeout} s")


def _job_id() -> str:
    result = subprocess.run(
        ["squeue", "-h", "-o", "%i %P %T"], capture_output=True, text=True, env=_slurm_env(), check=True
    )
    jobs = [line.split() for line in result.stdout.splitlines() if line.split()[1] == "debug"]
    assert len(jobs) == 1, result.stdout
    return jobs[0][0]


def _release_when_requeued(job: str, timeout: float = 120) -> None:
    """SLURM holds a requeued job about two minutes (its BeginTime); start it now instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T %r"],
            capture_output=True,
            text=True,
            env=_slurm_env(),
            check=False,
        ).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(
                ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=_slurm_env(), check=True
            )
            return
        if state and state[0] == "RUNNING" and time.monotonic() > deadline - timeout + 5:
            return  # already running again
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not requeued within {timeout} s")


def _resumed_from(folder: Path) -> list[int]:
    """The step each start of the job trained from (the progress log's first line)."""
    import re

    logs = "\n".join(p.read_text() for p in sorted((folder / "multirun").rglob("*_log.*")))
    return [int(step) for step in re.findall(r"training for \d+ steps \(from step (\d+)\)", logs)]


def _finished(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def _same_run(a: Path, b: Path) -> None:
    first = torch.load(a, map_location="cpu", weights_only=True)
    second = torch.load(b, map_location="cpu", weights_only=True)
    assert first["global_step"] == second["global_step"]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    for state_a, state_b in zip(
        first["optimizer_states"][0]["state"].values(),
        second["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        for name, value in state_a.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[name])), name


def test_a_run_submitted_to_slurm_finishes_as_it_does_here(cluster, tmp_path) -> None:
    process = _submit(tmp_path, 6)
    _finished(process)
    _same_run(tmp_path / "slurm" / "ckpt" / "last.ckpt", _local(tmp_path, 6))


def _interrupted_run(tmp_path: Path, stage: str, checkpoints, interrupt) -> None:
    """Submit 40 steps, ``interrupt(job)`` after the checkpoint of step 4, then compare with a local run."""
    process = _submit(tmp_path, 40, stage, checkpoints)
    reached = _wait_for_checkpoint(tmp_path / "slurm", 4, process)
    job = _job_id()
    interrupt(job)
    _release_when_requeued(job)
    _finished(process)
    starts = _resumed_from(tmp_path / "slurm")
    assert len(starts) == 2 and starts[0] == 0 and reached <= starts[1] < 40, starts
    _same_run(tmp_path / "slurm" / "ckpt" / "last.ckpt", _local(tmp_path, 40, stage, checkpoints))


@pytest.mark.parametrize("stage", STAGES)
def test_a_job_signalled_usr2_is_requeued_and_resumes_bit_identically(
    cluster,
    tmp_path,
    stage,
    tiny_checkpoints,  # noqa: F811
) -> None:
    """USR2 is what SLURM sends ``signal_delay_s`` before a time limit (``--signal=USR2@...``)."""

    def usr2(job: str) -> None:
        subprocess.run(["scancel", "--signal=USR2", job], env=_slurm_env(), check=True)

    _interrupted_run(tmp_path, stage, tiny_checkpoints, usr2)


@pytest.mark.parametrize("stage", ["teacher", "dmd"])
def test_a_preempted_job_is_requeued_and_resumes_bit_identically(
    cluster,
    tmp_path,
    stage,
    tiny_checkpoints,  # noqa: F811
) -> None:
    """A job of the `urgent` partition takes every CPU: SLURM requeues the running `debug` job."""

    def preempt(job: str) -> None:
        urgent = subprocess.run(
            [
                "sbatch",
                "-p",
                "urgent",
                "-c",
                str(os.cpu_count() or 2),
                "--wrap",
                "sleep 5",
                "-o",
                str(tmp_path / "urgent.out"),
            ],
            capture_output=True,
            text=True,
            env=_slurm_env(),
            check=True,
        )
        assert "Submitted batch job" in urgent.stdout

    _interrupted_run(tmp_path, stage, tiny_checkpoints, preempt)


#: Two ranks on the one node: FSDP2 over gloo, full (not sharded) checkpoints to compare them as files.
TWO_RANKS = (
    "trainer.accelerator=cpu",
    "trainer.num_nodes=1",
    "trainer.devices=2",
    "trainer.strategy.data_parallel_size=2",
)


def _same_sharded_run(a: Path, b: Path, tmp_path: Path) -> None:
    """Two sharded checkpoints (directories) hold the same step and the same tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    assert _step(a) == _step(b)
    tensors = []
    for index, folder in enumerate((a, b)):
        dcp_to_torch_save(folder, tmp_path / f"gathered_{index}.pt")
        tensors.append(_flat(torch.load(tmp_path / f"gathered_{index}.pt", weights_only=True)))
    assert tensors[0].keys() == tensors[1].keys() and len(tensors[0]) > 0
    for key, value in tensors[0].items():
        assert torch.equal(value, tensors[1][key]), key


def _flat(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, dict):
        return {k: v for key, item in tree.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): torch.as_tensor(tree)} if isinstance(tree, torch.Tensor | int | float) else {}


@pytest.mark.parametrize("sharded", [False, True])
def test_two_ranks_under_fsdp_slurm_are_requeued_and_resume_bit_identically(
    cluster,
    tmp_path,
    sharded,
    tiny_checkpoints,  # noqa: F811
) -> None:
    """trainer=fsdp_slurm: SLURM starts both ranks (srun), submitit requeues, Lightning reads the ranks."""
    ranks = (*TWO_RANKS, f"trainer.strategy.save_distributed_checkpoint={str(sharded).lower()}")
    process = _submit(tmp_path, 24, "dmd", tiny_checkpoints, ("trainer=fsdp_slurm", *ranks))
    reached = _wait_for_checkpoint(tmp_path / "slurm", 4, process)
    job = _job_id()
    subprocess.run(["scancel", "--signal=USR2", job], env=_slurm_env(), check=True)
    _release_when_requeued(job)
    _finished(process)
    starts = _resumed_from(tmp_path / "slurm")
    # every rank logs its starts: from 0, then from the checkpoint
    assert set(starts) == {0, starts[-1]} and reached <= starts[-1] < 24, starts
    local = _local(tmp_path, 24, "dmd", tiny_checkpoints, ("trainer=fsdp", *ranks))
    if sharded:
        _same_sharded_run(tmp_path / "slurm" / "ckpt" / "last.ckpt", local, tmp_path)
    else:
        _same_run(tmp_path / "slurm" / "ckpt" / "last.ckpt", local)


@pytest.mark.parametrize(("stage", "steps"), [("teacher", 1500), ("dmd", 600)])
def test_a_job_at_its_time_limit_is_requeued_until_done_and_resumes_bit_identically(
    cluster,
    tmp_path,
    stage,
    steps,
    tiny_checkpoints,  # noqa: F811
) -> None:
    """A one-minute limit and a run longer than that: SLURM signals USR2 before each limit (up to a
    minute early, its event resolution), submitit requeues, every allocation resumes from last.ckpt."""
    limit = ("hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30")
    every = ("callbacks.model_checkpoint.every_n_train_steps=50", "callbacks.model_checkpoint.save_top_k=1")
    process = _submit(tmp_path, steps, stage, tiny_checkpoints, (*limit, *every))
    deadline = time.monotonic() + 900
    while process.poll() is None and time.monotonic() < deadline:
        result = subprocess.run(
            ["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, env=_slurm_env(), check=False
        )
        for line in result.stdout.splitlines():
            job, state, reason = (line.split() + ["", "", ""])[:3]
            if state == "PENDING" and reason == "BeginTime":  # requeued: start it without the wait
                subprocess.run(
                    ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=_slurm_env(), check=False
                )
        time.sleep(0.5)
    _finished(process)
    starts = _resumed_from(tmp_path / "slurm")
    assert len(starts) >= 2 and starts[0] == 0 and starts == sorted(starts), starts
    _same_run(
        tmp_path / "slurm" / "ckpt" / "last.ckpt", _local(tmp_path, steps, stage, tiny_checkpoints, every)
    )
