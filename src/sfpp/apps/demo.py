"""``make demo``: the whole method on the built-in world, from nothing to a long video, on a laptop CPU.

``python -m sfpp.apps.demo`` trains the toy teacher, writes its ODE pairs, runs the ODE init and the
extended DMD (Self-Forcing++) at a demo budget, then streams videos 20 times the teacher's horizon
for held-out prompts and writes, under ``--out`` (``artifacts/demo``):

* ``videos/*.mp4`` (and a JSON of metrics beside each) and ``ground_truth.mp4`` for comparison;
* ``curves.png``: visual stability and quality (Frechet distance to real clips) along the video,
  for the student and for real videos of the same prompts;
* ``summary.md`` / ``summary.json``: the numbers, the stage timings and what was reused;
  ``--publish`` copies the JSON, with the date, commit and machine, to ``docs/results/demo.json``.

Stages whose checkpoint already exists (``checkpoints/<task>/last.ckpt``, the ODE pairs' index) are
reused, so a second run only regenerates the videos; ``--force teacher`` (or any stage name)
retrains one. The teacher is ``experiment=toy_teacher`` as it is; the later stages run at the demo
budgets of :func:`~sfpp.apps.pipeline.toy_stages`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sfpp.apps.evaluation import LongVideoReport, evaluate_long_videos, plot_curves
from sfpp.apps.pipeline import (
    StageInterruptedError,
    StageRun,
    StageTiming,
    git_commit,
    machine,
    run_stages,
    toy_stages,
)
from sfpp.io.video import write_video
from sfpp.world import HORIZON, ground_truth, heldout_prompts

__all__ = ["DEMO_PROMPTS", "main", "run_demo"]

console = Console(highlight=False)

#: Held-out prompts of the demo video (never seen in training).
DEMO_PROMPTS: tuple[str, ...] = tuple(heldout_prompts(2)[i] for i in (0, 5, 10, 15))


def _collect_into(frames: list[torch.Tensor]) -> Callable[[Any], None]:
    """A per-chunk callback that appends the chunk's decoded frames to ``frames``."""
    return lambda info: frames.append(info.frames)


def generate_long_videos(
    checkpoint: Path,
    teacher_ckpt: Path,
    prompts: Sequence[str],
    num_frames: int,
    out_dir: Path,
    seed: int = 0,
) -> torch.Tensor:
    """Stream one video per prompt with the student into ``out_dir``; return the frames ``(B, 3, F, H, W)``."""
    from sfpp.generate import generate_video, load_generator

    generator = load_generator(checkpoint, teacher_ckpt=str(teacher_ckpt), device="cpu")
    videos = []
    for index, prompt in enumerate(prompts):
        frames: list[torch.Tensor] = []
        generate_video(
            generator, prompt, num_frames, out_dir, seed=seed + index, on_chunk=_collect_into(frames)
        )
        videos.append(torch.cat(frames, dim=1))  # chunks (3, f, H, W) -> (3, F, H, W)
    return torch.stack(videos)


def write_summary(
    out: Path,
    reports: dict[str, LongVideoReport],
    timings: list[StageTiming],
    seconds: float,
    num_frames: int,
) -> Path:
    """Write ``summary.json`` and ``summary.md`` (numbers per model, stage timings)."""
    keys = [
        "visual_stability",
        "quality_fd",
        "dynamic_degree",
        "world_clean_frame_fraction",
        "world_detected_fraction",
    ]
    data = {
        "frames": num_frames,
        "horizons": num_frames / HORIZON,
        "total_minutes": seconds / 60,
        "stages": [{"name": t.name, "reused": t.reused, "minutes": t.seconds / 60} for t in timings],
        "models": {name: report.summary for name, report in reports.items()},
    }
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# sfpp demo: {num_frames} frames = {num_frames // HORIZON} teacher horizons",
        "",
        "| video | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, report in reports.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{report.summary.get(k, float('nan')):.3f}" for k in keys) + " |"
        )
    lines += ["", "| stage | minutes |", "|---|---|"]
    lines += [f"| {t.name} | {'reused' if t.reused else f'{t.seconds / 60:.1f}'} |" for t in timings]
    lines += ["", f"Total: {seconds / 60:.1f} min."]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(
    out: Path,
    horizons: int = 20,
    force: Sequence[str] = (),
    root: Path = Path("."),
    stages: list[StageRun] | None = None,
    teacher: str = "shipped",
) -> dict[str, LongVideoReport]:
    """Train what is missing, generate ``horizons`` teacher horizons per demo prompt, evaluate, plot.

    Args:
        out: Output directory of the videos, the plot and the summary.
        horizons: Video length in teacher horizons (20: the paper's claim in miniature).
        force: Stages to retrain even if their checkpoint exists.
        root: Repository root.
        stages: The pipeline (default: :func:`~sfpp.apps.pipeline.toy_stages`).
        teacher: ``shipped`` (the teacher shipped with the package) or ``train`` (``make demo-full``).

    Returns:
        The reports of the student and of the real videos.
    """
    began = time.perf_counter()
    stages = stages if stages is not None else toy_stages(root, teacher)
    timings = run_stages(stages, force=force, cwd=root)
    teacher_ckpt, student_ckpt = stages[0].done_file, stages[-1].done_file
    num_frames = horizons * HORIZON
    console.rule(
        f"generating {len(DEMO_PROMPTS)} videos of {num_frames} frames ({horizons} teacher horizons)"
    )
    prompts = list(DEMO_PROMPTS)
    student = generate_long_videos(student_ckpt, teacher_ckpt, prompts, num_frames, out / "videos")
    real = ground_truth(prompts, num_frames)
    write_video(out / "ground_truth.mp4", torch.cat(list(real), dim=-1), fps=8, upscale=8)  # side by side
    write_video(out / "student_side_by_side.mp4", torch.cat(list(student), dim=-1), fps=8, upscale=8)
    reports = {
        "Self-Forcing++ student": evaluate_long_videos(student, prompts, window_frames=HORIZON),
        "real videos": evaluate_long_videos(real, prompts, window_frames=HORIZON),
    }
    curves = plot_curves(reports, out / "curves.png", horizon_frames=HORIZON, fps=8)
    summary = write_summary(out, reports, timings, time.perf_counter() - began, num_frames)
    console.print(summary.read_text())
    console.print(f"videos: {out / 'videos'}  (all four side by side: {out / 'student_side_by_side.mp4'})")
    console.print(f"curves: {curves}\nsummary: {summary}")
    return reports


def publish(out: Path, root: Path, command: str, note: str | None = None) -> Path:
    """Copy ``out/summary.json`` with its provenance to ``docs/results/demo.json``; regenerate the pages.

    Args:
        out: The demo's output directory.
        root: Repository root.
        command: The command that produced the run (``make demo``).
        note: What else a reader should know about the run (what else ran, what was reused).
    """
    from sfpp.apps.results_pages import main as results_pages

    data = json.loads((out / "summary.json").read_text())
    data |= {
        "measured": date.today().isoformat(),
        "commit": git_commit(root),
        "command": command,
        "machine": machine(),
    }
    if note:
        data["note"] = note
    target = root / "docs" / "results" / "demo.json"
    target.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"published {target}")
    results_pages(["--root", str(root)])
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m sfpp.apps.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"), help="output directory")
    parser.add_argument(
        "--horizons", type=int, default=20, help="video length in teacher horizons (8 frames)"
    )
    parser.add_argument("--force", nargs="*", default=[], help="stages to retrain even if finished")
    parser.add_argument(
        "--train-only", action="store_true", help="train the missing stages, then stop (make serve)"
    )
    parser.add_argument(
        "--train-teacher",
        action="store_true",
        help="train the teacher too instead of installing the shipped one (make demo-full)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="then write docs/results/demo.json (with the date, commit and machine) and regenerate the pages",
    )
    args = parser.parse_args(argv)
    if args.horizons < 2:
        parser.error("--horizons must be >= 2 (the curves compare windows with the first one)")
    try:
        teacher = "train" if args.train_teacher else "shipped"
        if args.train_only:
            run_stages(toy_stages(Path("."), teacher), force=args.force, cwd=Path("."))
            return
        run_demo(args.out, args.horizons, args.force, teacher=teacher)
    except StageInterruptedError as error:
        console.print(f"[bold]stopped[/]: {error}. Run `make demo` again to continue.")
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        console.print(
            "[bold]stopped[/] after training: the trained stages are kept; `make demo` again reuses them "
            "and makes the video and the curves."
        )
        raise SystemExit(130) from None
    if args.publish:
        given = list(sys.argv[1:] if argv is None else argv)
        publish(args.out, Path("."), " ".join(["python -m sfpp.apps.demo", *given]))


if __name__ == "__main__":
    main()
