"""``make study``: Self-Forcing vs Self-Forcing++ (and + GRPO) on the built-in world, in miniature.

``python -m sfpp.apps.study`` trains the toy teacher, its ODE pairs and the ODE-init student once (the
stages of :mod:`sfpp.apps.demo`, reused when finished), then from the same ODE init:

* ``Self-Forcing``: extended DMD with rollouts of one teacher horizon (N = K = 8 latent frames);
* ``Self-Forcing++``: rollouts of 20 horizons (N = 20K = 160 frames), a uniformly drawn window of K;
* ``Self-Forcing++ + GRPO``: the Self-Forcing++ student after GRPO with the continuity reward.

Two references frame the numbers: real videos of the same prompts at every horizon (the floor of the
Frechet distance, the metrics' values for a perfect model) and the teacher's own clips at its
horizon (its 32-step CFG sampler, bidirectional; what DMD distils, so the best a student can hope
for at 1x).

Each student streams videos of 20 horizons for held-out prompts with several seeds; every metric is
computed on the first 1, 5, 10 and 20 horizons of each video (a causal rollout's prefix is the
shorter video with the same seed). The result, under ``--out`` (``artifacts/study``):

* ``table.md`` / ``results.json``: visual stability, quality (Frechet distance to real clips),
  dynamic degree and the world's clean-frame fraction per model and horizon, mean +- standard
  deviation over the seeds (the layout of the paper's Tables 1-2);
* ``quality_vs_horizon.png``: those numbers against the horizon;
* ``side_by_side_seed<s>.mp4``: the models' videos of the first prompt next to each other, with the
  real video of that prompt on the right.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from sfpp.apps.evaluation import evaluate_long_videos
from sfpp.apps.pipeline import StageRun, run_stages, toy_stages
from sfpp.diffusion.rollout import rollout_from_seed
from sfpp.io.video import write_video
from sfpp.world import HORIZON, TeacherClipSampler, ground_truth, heldout_prompts

__all__ = [
    "HORIZONS",
    "METRICS",
    "REAL_LABEL",
    "TEACHER_LABEL",
    "StudyModel",
    "evaluate_student",
    "main",
    "real_videos",
    "run_study",
    "study_stages",
    "teacher_videos",
]

console = Console(highlight=False)

#: Video lengths of the evaluation, in teacher horizons.
HORIZONS: tuple[int, ...] = (1, 5, 10, 20)
#: Reported numbers: (key in the evaluation summary, column title, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("visual_stability", "stability", True),
    ("quality_fd", "FD to real", False),
    ("dynamic_degree", "dynamic", True),
    ("world_clean_frame_fraction", "clean frames", True),
)
#: Labels of the reference rows (drawn dashed in the plot).
REAL_LABEL = "Real videos (reference)"
TEACHER_LABEL = "Teacher at its horizon (reference)"
#: Window of the stability and quality curves: half a horizon, so that 1 horizon has two windows.
EVAL_WINDOW = HORIZON // 2


@dataclass(frozen=True)
class StudyModel:
    """A trained student of the study: its label and checkpoint."""

    label: str
    checkpoint: Path


def study_stages(root: Path = Path("."), dmd_steps: int = 850, grpo_steps: int = 60) -> list[StageRun]:
    """Teacher, ODE pairs, ODE init (shared with the demo), then the three students.

    Args:
        root: Repository root.
        dmd_steps: Optimisation steps of each DMD run (``trainer.max_steps``; 100 critic warm-up
            steps, then 4 critic steps per generator step).
        grpo_steps: GRPO steps after Self-Forcing++.
    """
    shared = toy_stages(root)[:3]
    checkpoints = root / "checkpoints"

    def dmd(name: str, experiment: str, rollout_frames: int) -> StageRun:
        return StageRun(
            name,
            "sfpp.train",
            [
                f"experiment={experiment}",
                f"task_name={name}",
                f"stage.rollout_frames={rollout_frames}",
                f"trainer.max_steps={dmd_steps}",
                f"trainer.val_check_interval={dmd_steps}",
                f"callbacks.video_samples.every_n_steps={dmd_steps}",
            ],
            checkpoints / name / "last.ckpt",
        )

    grpo = StageRun(
        "study_sfpp_grpo",
        "sfpp.train",
        [
            "experiment=toy_grpo",
            "task_name=study_sfpp_grpo",
            f"student_ckpt={checkpoints / 'study_sfpp' / 'last.ckpt'}",
            f"trainer.max_steps={grpo_steps}",
            f"trainer.val_check_interval={grpo_steps}",
            f"callbacks.video_samples.every_n_steps={grpo_steps}",
            f"callbacks.model_checkpoint.every_n_train_steps={grpo_steps}",
        ],
        checkpoints / "study_sfpp_grpo" / "last.ckpt",
    )
    return [
        *shared,
        dmd("study_sf", "toy_self_forcing", HORIZON),
        dmd("study_sfpp", "toy_extend", 20 * HORIZON),
        grpo,
    ]


@torch.no_grad()
def generate_batch(
    checkpoint: Path, teacher_ckpt: Path, prompts: Sequence[str], num_frames: int, seeds: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Videos ``(B, 3, F, H, W)`` of a student for the prompts, one batched streaming rollout per seed.

    The checkpoint is loaded and the prompts are encoded once for all seeds.
    """
    from sfpp.generate import load_generator

    generator = load_generator(checkpoint, teacher_ckpt=str(teacher_ckpt), device="cpu", progress=False)
    context = generator.text_encoder(list(prompts))[0]
    videos = {}
    for seed in seeds:
        latents = rollout_from_seed(
            generator.model,
            context,
            num_frames,
            generator.latent_shape,
            generator.sampler,
            seed=seed,
            window_frames=generator.cache_window_frames,
            sink_frames=generator.sink_frames,
        )
        videos[seed] = generator.codec.decode(latents).clamp(-1, 1)
    return videos


@torch.no_grad()
def teacher_videos(
    teacher_ckpt: Path, prompts: Sequence[str], seeds: Sequence[int]
) -> dict[int, torch.Tensor]:
    """The teacher's own clips ``(B, 3, K, H, W)`` of one horizon for the prompts, one batch per seed.

    The teacher, its text encoder, its sampler (32 Euler steps with CFG) and the clip shape are those
    that wrote the ODE pairs (``conf/ode_pairs.yaml``), so this is exactly what the students distil.
    """
    sample = TeacherClipSampler.from_checkpoint(teacher_ckpt)
    return {seed: sample(prompts, seed) for seed in seeds}


def real_videos(prompts: Sequence[str], num_frames: int, seeds: Sequence[int]) -> dict[int, torch.Tensor]:
    """Real videos ``(B, 3, F, H, W)`` of the world for the prompts; each seed draws other scenes."""
    return {seed: ground_truth(prompts, num_frames, seed=seed * len(prompts)) for seed in seeds}


def evaluate_student(
    videos_by_seed: dict[int, torch.Tensor], prompts: Sequence[str], horizons: Sequence[int] = HORIZONS
) -> dict[int, dict[str, list[float]]]:
    """Every metric of every horizon prefix, one value per seed: ``{horizon: {metric: [per seed]}}``."""
    results: dict[int, dict[str, list[float]]] = {}
    for horizon in horizons:
        per_metric: dict[str, list[float]] = {key: [] for key, _, _ in METRICS}
        for videos in videos_by_seed.values():
            prefix = videos[:, :, : horizon * HORIZON]  # (B, 3, F, H, W) -> the first `horizon` horizons
            summary = evaluate_long_videos(prefix, prompts, window_frames=EVAL_WINDOW).summary
            for key in per_metric:
                per_metric[key].append(summary[key])
        results[horizon] = per_metric
    return results


def write_table(results: dict[str, dict[int, dict[str, list[float]]]], path: Path, header: str) -> Path:
    """The markdown table: one row per model and horizon, mean +- std over seeds per metric."""
    columns = " | ".join(f"{title} {'(up)' if up else '(down)'}" for _, title, up in METRICS)
    lines = [header, "", f"| model | horizons | {columns} |", "|---|---|" + "---|" * len(METRICS)]
    for label, by_horizon in results.items():
        for horizon, values in by_horizon.items():
            cells = " | ".join(f"{np.mean(values[k]):.3f} +- {np.std(values[k]):.3f}" for k, _, _ in METRICS)
            lines.append(f"| {label} | {horizon}x ({horizon * HORIZON} frames) | {cells} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_results(results: dict[str, dict[int, dict[str, list[float]]]], path: Path) -> Path:
    """Each metric against the horizon, one line per model, with the spread over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), constrained_layout=True)
    for axis, (key, title, up) in zip(axes, METRICS, strict=True):
        for label, by_horizon in results.items():
            horizons = list(by_horizon)
            means = [np.mean(by_horizon[h][key]) for h in horizons]
            spreads = [np.std(by_horizon[h][key]) for h in horizons]
            style = {"color": "0.4", "linestyle": "--"} if label in (REAL_LABEL, TEACHER_LABEL) else {}
            marker = "*" if label == TEACHER_LABEL else "o"
            axis.errorbar(horizons, means, yerr=spreads, marker=marker, capsize=3, label=label, **style)
        axis.set_title(f"{title} ({'higher' if up else 'lower'} is better)")
        axis.set_xlabel("video length (teacher horizons)")
        axis.set_xticks(sorted({h for by_horizon in results.values() for h in by_horizon}))
        axis.grid(alpha=0.3)
        if key == "quality_fd":
            axis.set_yscale("log")
    axes[0].legend(fontsize=8)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run_study(
    out: Path,
    seeds: Sequence[int] = (0, 1, 2),
    num_prompts: int = 16,
    dmd_steps: int = 850,
    grpo_steps: int = 60,
    force: Sequence[str] = (),
    root: Path = Path("."),
    stages: list[StageRun] | None = None,
    models: list[StudyModel] | None = None,
    horizons: Sequence[int] = HORIZONS,
) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Train what is missing, evaluate every student at every horizon, write the table and plot.

    Args:
        out: Output directory.
        seeds: Seeds of the evaluation videos (mean and spread are over these).
        num_prompts: Held-out prompts per seed.
        dmd_steps: Steps of each DMD run.
        grpo_steps: Steps of the GRPO run.
        force: Stages to retrain even if finished.
        root: Repository root.
        stages: The pipeline (default :func:`study_stages`); its first stage must be the teacher.
        models: The students to evaluate (default: the last three stages' checkpoints).
        horizons: Evaluation lengths in teacher horizons; the videos are the longest of them.

    Returns:
        ``{model label: {horizon: {metric: [value per seed]}}}``, with the rows :data:`REAL_LABEL`
        (every horizon) and :data:`TEACHER_LABEL` (1x only) after the students.
    """
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stages = stages if stages is not None else study_stages(root, dmd_steps, grpo_steps)
    timings = run_stages(stages, force=force, cwd=root)
    teacher_ckpt = stages[0].done_file
    if models is None:
        labels = ("Self-Forcing", "Self-Forcing++", "Self-Forcing++ + GRPO")
        models = [
            StudyModel(label, stage.done_file) for label, stage in zip(labels, stages[-3:], strict=True)
        ]
    prompts = list(heldout_prompts(2)[:num_prompts])
    num_frames = max(horizons) * HORIZON
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    first_prompt: dict[int, list[torch.Tensor]] = {seed: [] for seed in seeds}
    for model in models:
        console.rule(
            f"evaluating {model.label}: {len(seeds)} seeds x {len(prompts)} prompts x {num_frames} frames"
        )
        videos = generate_batch(model.checkpoint, teacher_ckpt, prompts, num_frames, seeds)
        for seed in seeds:
            first_prompt[seed].append(videos[seed][0])
        results[model.label] = evaluate_student(videos, prompts, horizons)
    console.rule("evaluating the references: real videos and the teacher at its horizon")
    real = real_videos(prompts, num_frames, seeds)
    results[REAL_LABEL] = evaluate_student(real, prompts, horizons)
    results[TEACHER_LABEL] = evaluate_student(teacher_videos(teacher_ckpt, prompts, seeds), prompts, (1,))
    for seed in seeds:
        first_prompt[seed].append(real[seed][0])
    for seed, row in first_prompt.items():
        write_video(
            out / f"side_by_side_seed{seed}.mp4", torch.cat(row, dim=-1), fps=8, upscale=8
        )  # models left to right
    minutes = (time.perf_counter() - began) / 60
    trained = ", ".join(f"{t.name} {'reused' if t.reused else f'{t.seconds / 60:.1f} min'}" for t in timings)
    header = (
        f"Study on held-out prompts ({len(prompts)} prompts x {len(seeds)} seeds; mean +- std over seeds); "
        f"{minutes:.0f} min in all ({trained}). Left to right in the mp4s: {', '.join(m.label for m in models)}, real video."
    )
    table = write_table(results, out / "table.md", header)
    plot = plot_results(results, out / "quality_vs_horizon.png")
    (out / "results.json").write_text(json.dumps({"minutes": minutes, "results": results}, indent=2) + "\n")
    console.print(table.read_text())
    console.print(f"table: {table}\nplot: {plot}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m sfpp.apps.study``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/study"), help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument(
        "--prompts",
        type=int,
        default=16,
        help="held-out prompts per seed (each window's Frechet distance is fitted on prompts x 4 frames)",
    )
    parser.add_argument("--dmd-steps", type=int, default=850, help="steps of each DMD run")
    parser.add_argument("--grpo-steps", type=int, default=60, help="steps of the GRPO run")
    parser.add_argument("--force", nargs="*", default=[], help="stages to retrain even if finished")
    args = parser.parse_args(argv)
    run_study(args.out, args.seeds, args.prompts, args.dmd_steps, args.grpo_steps, args.force)


if __name__ == "__main__":
    main()
