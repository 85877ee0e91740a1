"""Run the training stages of the built-in world one after the other, reusing finished ones.

A :class:`StageRun` is one command (``python -m sfpp.train experiment=...`` or
``python -m sfpp.ode_pairs ...``) and the file it leaves (a checkpoint, an index). :func:`run_stages`
runs each stage in a child process that shares the terminal (its own progress bars show).

A stage is done when it finished, not when its file exists: beside the file, a record
(``<file>.stage.json``, written atomically) holds the stage's settings and whether it finished, with
the step it reached. A second run reuses a finished stage of the same settings; resumes a training
stage that was interrupted from its last checkpoint to its planned end (``ckpt_path``), saying from
which step; and trains again, from scratch, a stage whose files come from other settings (saying
so). Ctrl-C stops the pipeline with :class:`StageInterruptedError`, which says what was kept.
``make demo`` (:mod:`sfpp.apps.demo`) and ``make study`` are built on it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sfpp.utils.precision import bf16_is_native

__all__ = [
    "StageFailedError",
    "StageInterruptedError",
    "StageRun",
    "StageTiming",
    "checkpoint_step",
    "git_commit",
    "machine",
    "run_stages",
    "toy_stages",
]

# soft_wrap: a stage's line stays one line in a log file (rich wraps at 80 columns off a terminal)
console = Console(highlight=False, soft_wrap=True)


class StageFailedError(RuntimeError):
    """A stage's process exited with an error (its output above says why)."""


class StageInterruptedError(RuntimeError):
    """The pipeline was interrupted (Ctrl-C) while a stage ran; the message says what was kept.

    Attributes:
        stage: The interrupted stage's name.
        kept: What the stage leaves for the next run (its last checkpoint, or nothing).
    """

    def __init__(self, stage: str, kept: str) -> None:
        super().__init__(f"interrupted during stage {stage!r}; {kept}")
        self.stage, self.kept = stage, kept


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
        accepts: Other settings whose finished run counts as this stage done (the shipped
            teacher's stage accepts a teacher trained by the pipeline).
    """

    name: str
    module: str
    overrides: Sequence[str]
    done_file: Path
    expected_minutes: float | None = None
    ignored_warnings: Sequence[str] = ()
    accepts: Sequence[Sequence[str]] = ()

    def command(self, resume_from: Path | None = None) -> list[str]:
        """The command line, run with this interpreter (resuming from a checkpoint if given)."""
        overrides = list(self.overrides)
        if resume_from is not None:
            overrides = [o for o in overrides if not o.lstrip("+").startswith("ckpt_path=")]
            overrides.append(f"ckpt_path={resume_from}")
        return [sys.executable, "-m", self.module, *overrides]

    @property
    def record_file(self) -> Path:
        """The stage's record: its settings, whether it finished, the step it reached."""
        return self.done_file.with_name(self.done_file.name + ".stage.json")

    @property
    def resumable(self) -> bool:
        """A training stage whose checkpoint a new run can resume from."""
        return self.module == "sfpp.train" and self.done_file.suffix == ".ckpt"

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
    resumed_from_step: int | None = None


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a Lightning checkpoint was written at (``None`` if it has none)."""
    try:
        step = torch.load(path, map_location="cpu", weights_only=False).get("global_step")
    except Exception:  # an unreadable file: the stage starts again
        return None
    return int(step) if step is not None else None


def _read_record(stage: StageRun) -> dict[str, Any] | None:
    try:
        return json.loads(stage.record_file.read_text())
    except (OSError, ValueError):
        return None


def _write_record(stage: StageRun, **fields: Any) -> None:
    """Write the stage's record atomically (a temporary file renamed over it)."""
    record = {"stage": stage.name, "module": stage.module, "overrides": list(stage.overrides), **fields}
    stage.record_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = stage.record_file.with_name(stage.record_file.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, stage.record_file)


def _plan(stage: StageRun, forced: bool) -> tuple[str, str, int | None]:
    """What to do with a stage: ``("reuse" | "resume" | "train", why, step)``."""
    record = _read_record(stage)
    same = record is not None and record.get("overrides") == list(stage.overrides)
    exists = stage.done_file.exists()
    if forced:
        return "train", "retraining it as asked", None
    accepted = [list(a) for a in stage.accepts]
    if exists and record is not None and record.get("finished") and record.get("overrides") in accepted:
        return (
            "reuse",
            f"reusing {stage.done_file} ({' '.join(record['overrides'])}, finished)",
            record.get("step"),
        )
    if record is not None and not same:
        return (
            "train",
            f"its files come from other settings ({' '.join(record.get('overrides', []))}); training it again",
            None,
        )
    if exists and same and record.get("finished"):
        step = record.get("step")
        return (
            "reuse",
            f"reusing {stage.done_file}" + (f" (finished at step {step})" if step is not None else ""),
            step,
        )
    if exists and stage.resumable:
        step = checkpoint_step(stage.done_file)
        if step is not None:
            how = "it was interrupted" if record is not None else "no record of how it ended"
            return "resume", f"resuming from step {step} of {stage.done_file} ({how})", step
    if exists:
        return "train", f"{stage.done_file} is from a run that did not finish; training it again", None
    return "train", "", None


def run_stages(
    stages: Sequence[StageRun], force: Sequence[str] = (), cwd: Path | None = None
) -> list[StageTiming]:
    """Run the stages in order: reuse the finished ones, resume the interrupted ones, train the rest.

    Args:
        stages: The pipeline.
        force: Names of stages to train again from scratch even when they finished.
        cwd: Working directory of the child processes (default: the current one).

    Returns:
        One :class:`StageTiming` per stage.

    Raises:
        StageFailedError: When a stage exits with an error, or finishes without writing its file.
        StageInterruptedError: On Ctrl-C while a stage runs (saying what it keeps).
        ValueError: For an unknown name in ``force``.
    """
    names = {stage.name for stage in stages}
    unknown = sorted(set(force) - names)
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in force; the stages are {sorted(names)}")
    timings = []
    for index, stage in enumerate(stages, start=1):
        header = f"[{index}/{len(stages)}] {stage.name}"
        action, why, step = _plan(stage, stage.name in force)
        if action == "reuse":
            console.print(f"[bold]{header}[/]: {why}")
            timings.append(StageTiming(stage.name, reused=True, done_file=stage.done_file))
            continue
        resume_from = stage.done_file if action == "resume" else None
        if action == "train" and stage.done_file.exists():
            stage.done_file.unlink()  # never resumed from, nor mistaken for this run's
        command = stage.command(resume_from)
        console.rule(f"{header}: {' '.join(command[1:])}")
        if why:
            console.print(f"[bold]{header}[/]: {why}")
        if stage.expected_minutes is not None:
            console.print(
                f"[bold]{header}[/]: expected about {stage.expected_minutes:.0f} min on a 2-core CPU "
                f"{'with' if bf16_is_native('cpu') else 'without'} native bf16 (measured)"
                + (" for the whole stage" if resume_from is not None else "")
            )
        _write_record(stage, finished=False, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        began = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=cwd, env=stage.environment(), check=False)
        except KeyboardInterrupt:
            raise StageInterruptedError(stage.name, _kept(stage)) from None
        seconds = time.perf_counter() - began
        if result.returncode in (-2, 130):  # the child stopped on SIGINT
            raise StageInterruptedError(stage.name, _kept(stage))
        if result.returncode != 0:
            raise StageFailedError(
                f"stage {stage.name!r} failed (exit code {result.returncode}); see its output above"
            )
        if not stage.done_file.exists():
            raise StageFailedError(f"stage {stage.name!r} finished but did not write {stage.done_file}")
        reached = checkpoint_step(stage.done_file) if stage.resumable else None
        _write_record(
            stage,
            finished=True,
            step=reached,
            seconds=seconds,
            finished_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        console.print(f"[bold]{header}[/]: done in {seconds / 60:.1f} min (elapsed) -> {stage.done_file}")
        timings.append(
            StageTiming(
                stage.name, reused=False, seconds=seconds, done_file=stage.done_file, resumed_from_step=step
            )
        )
    return timings


def _kept(stage: StageRun) -> str:
    """What an interrupted stage leaves for the next run."""
    if stage.resumable and stage.done_file.exists():
        step = checkpoint_step(stage.done_file)
        return f"kept {stage.done_file} (step {step}); the next run resumes it from there"
    return "nothing of it is kept; the next run starts it again"


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


#: Minutes of each toy stage measured by published runs, by whether the CPU computes bf16 natively:
#: a 2-core Xeon with AMX (``make demo``, 2026-12-02, commit 73da120) and a 2-core Xeon without
#: AVX512-BF16 (2026-12-07: the teacher from ``make demo-full`` at 8eb057a, whose teacher stage
#: shared the CPU with test runs for 12 of its 34 minutes; the other stages from ``make demo`` at
#: ddcc0b4, alone); the expected-time messages print them.
MEASURED_MINUTES: dict[bool, dict[str, float]] = {
    True: {"teacher": 13.6, "ode_pairs": 1.4, "ode_init": 2.1, "self_forcing_pp": 5.2},
    False: {"teacher": 34.4, "ode_pairs": 1.1, "ode_init": 2.2, "self_forcing_pp": 7.9},
}

#: The default teacher recipe's stage (``make demo-full``; the shipped teacher was trained by it).
TEACHER_OVERRIDES = ("experiment=toy_teacher",)


def toy_stages(root: Path = Path("."), teacher: str = "shipped") -> list[StageRun]:
    """The toy pipeline of ``make demo``: teacher, ODE pairs, ODE init, Self-Forcing++ at demo budgets.

    ``make study`` reuses its first three stages.

    Args:
        root: The repository root (where ``checkpoints/`` and ``artifacts/`` live).
        teacher: ``shipped`` (install the teacher trained by the project's pipeline and shipped in
            :mod:`sfpp.world.pretrained`; a teacher the pipeline trained here counts as done too)
            or ``train`` (train it with the default recipe: ``make demo-full``).

    Raises:
        ValueError: For another ``teacher``.
    """
    if teacher not in ("shipped", "train"):
        raise ValueError(f"teacher must be 'shipped' or 'train', got {teacher!r}")
    checkpoints = root / "checkpoints"
    minutes = MEASURED_MINUTES[bf16_is_native("cpu")]
    teacher_file = checkpoints / "toy_teacher" / "last.ckpt"
    if teacher == "train":
        # The default teacher recipe unchanged: a shorter budget never learns the shapes.
        teacher_stage = StageRun(
            "teacher",
            "sfpp.train",
            list(TEACHER_OVERRIDES),
            teacher_file,
            expected_minutes=minutes["teacher"],
        )
    else:
        teacher_stage = StageRun(
            "teacher",
            "sfpp.world.pretrained",
            [str(teacher_file)],
            teacher_file,
            expected_minutes=None,
            accepts=[list(TEACHER_OVERRIDES)],
        )
    return [
        teacher_stage,
        StageRun(
            "ode_pairs",
            "sfpp.ode_pairs",
            ["generator.num_trajectories=128", "generator.shard_size=64"],
            root / "artifacts" / "ode_pairs" / "toy" / "index.json",
            expected_minutes=minutes["ode_pairs"],
        ),
        StageRun(
            "ode_init",
            "sfpp.train",
            ["experiment=toy_ode_init", "trainer.max_steps=300", "trainer.val_check_interval=300"],
            checkpoints / "toy_ode_init" / "last.ckpt",
            expected_minutes=minutes["ode_init"],
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
            expected_minutes=minutes["self_forcing_pp"],
        ),
    ]
