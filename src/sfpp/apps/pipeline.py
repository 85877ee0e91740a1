"""Run the training stages of the built-in world one after the other, reusing finished ones.

A :class:`StageRun` is one command (``python -m sfpp.train experiment=...`` or
``python -m sfpp.ode_pairs ...``) and the file it leaves when it has finished (a checkpoint, an
index). :func:`run_stages` runs each stage whose file is missing, in a child process that shares
the terminal (its own progress bars show), and skips the others, so a second run reuses what the
first one trained. ``make demo`` (:mod:`sfpp.apps.demo`) and ``make study`` are built on it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from sfpp.utils.precision import bf16_is_native

__all__ = ["StageFailedError", "StageRun", "StageTiming", "git_commit", "machine", "run_stages", "toy_stages"]

# soft_wrap: a stage's line stays one line in a log file (rich wraps at 80 columns off a terminal)
console = Console(highlight=False, soft_wrap=True)


class StageFailedError(RuntimeError):
    """A stage's process exited with an error (its output above says why)."""


@dataclass(frozen=True)
class StageRun:
    """One stage of a pipeline.

    Args:
        name: Short name shown in the log (``teacher``, ``ode_init``...).
        module: The entry module, ``sfpp.train`` or ``sfpp.ode_pairs``.
        overrides: Hydra overrides, e.g. ``["experiment=toy_teacher", "trainer.max_steps=700"]``.
        done_file: The file the stage writes when it has finished; its existence means "reuse".
        expected_minutes: About how long the stage takes on a 2-core CPU, printed before it starts
            (``None``: not known).
        ignored_warnings: Starts of warning messages the stage's process hides (through
            ``PYTHONWARNINGS``): warnings that ask nothing of the user for this stage only; the one
            who sets them says why.
    """

    name: str
    module: str
    overrides: Sequence[str]
    done_file: Path
    expected_minutes: float | None = None
    ignored_warnings: Sequence[str] = ()

    def command(self) -> list[str]:
        """The command line, run with this interpreter."""
        return [sys.executable, "-m", self.module, *self.overrides]

    def environment(self) -> dict[str, str]:
        """This process's environment with :attr:`ignored_warnings` added to ``PYTHONWARNINGS``."""
        env = dict(os.environ)
        if self.ignored_warnings:
            for message in self.ignored_warnings:
                if "," in message or ":" in message:
                    raise ValueError(f"a PYTHONWARNINGS message cannot hold ',' or ':': {message!r}")
            filters = [env["PYTHONWARNINGS"]] if env.get("PYTHONWARNINGS") else []
            env["PYTHONWARNINGS"] = ",".join(filters + [f"ignore:{m}" for m in self.ignored_warnings])
        return env


@dataclass
class StageTiming:
    """What :func:`run_stages` did with a stage."""

    name: str
    reused: bool
    seconds: float = 0.0
    done_file: Path = field(default_factory=Path)


def run_stages(
    stages: Sequence[StageRun], force: Sequence[str] = (), cwd: Path | None = None
) -> list[StageTiming]:
    """Run the stages whose ``done_file`` is missing (or that are named in ``force``), in order.

    Args:
        stages: The pipeline.
        force: Names of stages to run even when their file exists.
        cwd: Working directory of the child processes (default: the current one).

    Returns:
        One :class:`StageTiming` per stage.

    Raises:
        StageFailedError: When a stage exits with an error, or finishes without writing its file.
        ValueError: For an unknown name in ``force``.
    """
    names = {stage.name for stage in stages}
    unknown = sorted(set(force) - names)
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in force; the stages are {sorted(names)}")
    timings = []
    for index, stage in enumerate(stages, start=1):
        header = f"[{index}/{len(stages)}] {stage.name}"
        if stage.done_file.exists() and stage.name not in force:
            console.print(f"[bold]{header}[/]: reusing {stage.done_file}")
            timings.append(StageTiming(stage.name, reused=True, done_file=stage.done_file))
            continue
        console.rule(f"{header}: {' '.join(stage.command()[1:])}")
        if stage.expected_minutes is not None:
            console.print(
                f"[bold]{header}[/]: expected about {stage.expected_minutes:.0f} min on a 2-core CPU"
            )
        began = time.perf_counter()
        result = subprocess.run(stage.command(), cwd=cwd, env=stage.environment(), check=False)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise StageFailedError(
                f"stage {stage.name!r} failed (exit code {result.returncode}); see its output above"
            )
        if not stage.done_file.exists():
            raise StageFailedError(f"stage {stage.name!r} finished but did not write {stage.done_file}")
        console.print(f"[bold]{header}[/]: done in {seconds / 60:.1f} min (elapsed) -> {stage.done_file}")
        timings.append(StageTiming(stage.name, reused=False, seconds=seconds, done_file=stage.done_file))
    return timings


def git_commit(root: Path = Path(".")) -> str:
    """The short commit of ``root``'s checkout (``unknown`` outside git): the provenance of published results."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def machine() -> str:
    """The CPU, its core count and whether it computes bf16 natively (what the stage times depend on)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if bf16_is_native("cpu") else "no native bf16 (the teacher trains in float32)"
    return f"{name}, {os.cpu_count()} cores, {bf16}"


def toy_stages(root: Path = Path(".")) -> list[StageRun]:
    """The toy pipeline of ``make demo``: teacher, ODE pairs, ODE init, Self-Forcing++ at demo budgets.

    ``make study`` reuses its first three stages.

    Args:
        root: The repository root (where ``checkpoints/`` and ``artifacts/`` live).
    """
    checkpoints = root / "checkpoints"
    return [
        StageRun(
            "teacher",
            "sfpp.train",
            # The default teacher recipe unchanged: a shorter budget never learns the shapes.
            ["experiment=toy_teacher"],
            checkpoints / "toy_teacher" / "last.ckpt",
            # compiled bf16 where the CPU has native bf16; float32 (about twice as long) elsewhere
            expected_minutes=14 if bf16_is_native("cpu") else 30,
        ),
        StageRun(
            "ode_pairs",
            "sfpp.ode_pairs",
            ["generator.num_trajectories=128", "generator.shard_size=64"],
            root / "artifacts" / "ode_pairs" / "toy" / "index.json",
            expected_minutes=1.5,
        ),
        StageRun(
            "ode_init",
            "sfpp.train",
            ["experiment=toy_ode_init", "trainer.max_steps=300", "trainer.val_check_interval=300"],
            checkpoints / "toy_ode_init" / "last.ckpt",
            expected_minutes=2,
        ),
        StageRun(
            "self_forcing_pp",
            "sfpp.train",
            [
                "experiment=toy_extend",
                "trainer.max_steps=350",
                "trainer.val_check_interval=350",
                "callbacks.video_samples.every_n_steps=350",
            ],
            checkpoints / "toy_extend" / "last.ckpt",
            expected_minutes=5,
        ),
    ]
