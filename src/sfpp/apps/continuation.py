"""Continue real clips: students trained with and without prefixes (``make continuation``).

``python -m sfpp.apps.continuation`` measures, on the built-in world, what prefix-conditioned
training (:class:`~sfpp.diffusion.prefix.PrefixTraining`) buys when a student continues frames it
is given, an image to animate (1 frame) or a clip to continue (one teacher horizon, 8 frames):

1. the study's shared stages (teacher, ODE init, the Self-Forcing baseline), reused when finished;
2. ``continuation_teacher``: the teacher fine-tuned to take given frames clean
   (``experiment=toy_teacher_prefix``);
3. two students from the baseline's EMA weights and critic, trained for the same number of steps
   against that teacher: ``continuation_plain`` (``experiment=toy_extend``: every rollout from
   noise) and ``continuation_prefix`` (``experiment=toy_prefix``: half of the steps from real
   frames).

Evaluation: the held-out prompts' real clips (the study's, one batch per evaluation seed) give
their first frames; each student (and the baseline) writes them into its cache and streams
``--horizons`` teacher horizons after them. Per horizon ``h`` (the window of ``K`` frames that
ends ``h`` horizons after the prefix): the Frechet distance of frame features to the real
continuation of the same clips, pooled over the evaluation seeds (``fd_to_continuation``), to real clips at large (``quality_fd``,
the study's), the world's object score (do the given objects keep their shape and colour) and
the motion gap to the real continuation (:func:`~sfpp.apps.study_metrics.score_horizons`). At the
seam: the mean pixel change from the last written frame to the first generated one, and the
motion of the first generated horizon, each divided by the real clip's at the same frames.
Every value is one number per evaluation seed (a batch of all prompts); the page gives mean and
spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from sfpp.apps.pipeline import StageRun, git_commit, machine, run_stages
from sfpp.apps.study_metrics import mean_and_spread, score_horizons, window_motion
from sfpp.apps.study_stages import BASE_STAGE, shared_stages
from sfpp.diffusion.prefix import hold_to_chunks
from sfpp.diffusion.rollout import rollout, write_prefix
from sfpp.metrics.quality_curve import FeatureStatistics, WindowQuality, feature_statistics
from sfpp.world import HORIZON, ground_truth, heldout_prompts

__all__ = [
    "ROWS",
    "continuation_stages",
    "continue_clips",
    "evaluate_continuation",
    "fd_to_continuation",
    "main",
    "seam_ratios",
]

console = Console(highlight=False)

#: The students compared: ``{key: (label, stage, experiment)}``; the baseline is the study's.
ROWS: dict[str, tuple[str, str, str | None]] = {
    "baseline": ("Self-Forcing (baseline, from noise only)", BASE_STAGE, None),
    "plain": ("Self-Forcing++ without prefixes", "continuation_plain", "toy_extend"),
    "prefix": ("Self-Forcing++ with prefixes", "continuation_prefix", "toy_prefix"),
}
TEACHER_STAGE = "continuation_teacher"


def continuation_stages(root: Path, steps: int, teacher_steps: int, seed: int = 1) -> list[StageRun]:
    """The study's shared stages, the prefix teacher and the two students (see the module docstring).

    Args:
        root: Where ``checkpoints/`` lives.
        steps: Optimisation steps of each student.
        teacher_steps: Fine-tuning steps of the teacher.
        seed: Training seed of every new stage.
    """
    checkpoints = root / "checkpoints"
    base = checkpoints / BASE_STAGE / "last.ckpt"
    teacher = checkpoints / TEACHER_STAGE / "last.ckpt"
    stages = [
        *shared_stages(root),
        StageRun(
            TEACHER_STAGE,
            "sfpp.train",
            [
                "experiment=toy_teacher_prefix",
                f"task_name={TEACHER_STAGE}",
                f"seed={seed}",
                f"trainer.max_steps={teacher_steps}",
                f"trainer.val_check_interval={teacher_steps}",
                f"callbacks.model_checkpoint.every_n_train_steps={teacher_steps}",
                f"callbacks.video_samples.every_n_steps={teacher_steps}",
            ],
            teacher,
        ),
    ]
    for key in ("plain", "prefix"):
        _, stage, experiment = ROWS[key]
        stages.append(
            StageRun(
                stage,
                "sfpp.train",
                [
                    f"experiment={experiment}",
                    f"task_name={stage}",
                    f"seed={seed}",
                    f"teacher_ckpt={teacher}",
                    f"student_ckpt={base}",
                    "stage.generator.prefix=ema.module.",  # the baseline as evaluated: its EMA weights
                    f"stage.critic_checkpoint={base}",
                    "stage.critic_warmup_steps=0",  # the baseline's critic is trained already
                    "data.num_frames=8",  # the same data for both (only the prefixed steps use it)
                    f"trainer.max_steps={steps}",
                    f"trainer.val_check_interval={steps}",
                    f"callbacks.model_checkpoint.every_n_train_steps={steps}",
                    f"callbacks.video_samples.every_n_steps={steps}",
                ],
                checkpoints / stage / "last.ckpt",
            )
        )
    return stages


@torch.no_grad()
def continue_clips(
    generator: Any, prompts: Sequence[str], clips: torch.Tensor, given: int, num_frames: int, seed: int
) -> tuple[torch.Tensor, int]:
    """Continue the first ``given`` frames of real clips with a student, one batched rollout.

    Args:
        generator: A :class:`~sfpp.inference.generator.VideoGenerator`.
        prompts: One prompt per clip.
        clips: Real clips ``(B, 3, F, H, W)`` in ``[-1, 1]``.
        given: Frames given.
        num_frames: Latent frames to generate after the prefix (whole chunks).
        seed: Seed of every random draw.

    Returns:
        ``(videos (B, 3, n + num_frames', H, W), n)``: the prefix as the codec gives it back (given
        frames, then held ones), then the continuation; ``n`` is the prefix's length in frames.
    """
    model, codec = generator.model, generator.codec
    frames, _ = hold_to_chunks(clips[:, :, :given], codec.temporal_stride, model.config.num_frames_per_chunk)
    prefix = codec.encode(frames)  # (B, C, n, h, w)
    context = generator.text_encoder(list(prompts))[0]
    cache = model.new_kv_cache(
        len(prompts),
        *generator.latent_shape[1:],
        window_frames=generator.cache_window_frames,
        sink_frames=generator.sink_frames,
    )
    rng = torch.Generator().manual_seed(seed)
    written = torch.cat(
        [c.latents for c in write_prefix(model, context, cache, prefix, generator.sampler, rng)], 2
    )
    latents = rollout(model, context, cache, num_frames, generator.latent_shape, generator.sampler, rng)
    videos = codec.decode(torch.cat([written, latents], dim=2)).clamp(-1, 1)  # (B, 3, F', H, W)
    return videos, codec.num_frames(prefix.shape[2])


def fd_to_continuation(generated: torch.Tensor, real: torch.Tensor | FeatureStatistics) -> float:
    """Frechet distance of the frame features of generated windows to those of the real ones.

    Args:
        generated: Generated windows ``(B, 3, K, H, W)``.
        real: The real continuation's windows ``(N, 3, K, H, W)`` (e.g. those of every evaluation
            seed), or their :func:`~sfpp.metrics.quality_curve.feature_statistics`.
    """
    reference = (
        real if isinstance(real, FeatureStatistics) else feature_statistics(list(real.float().cpu().numpy()))
    )
    quality = WindowQuality(reference, window_frames=generated.shape[2])
    quality.update(generated.float().cpu())
    return float(quality.compute().reshape(-1)[0])  # one window


def seam_ratios(videos: torch.Tensor, real: torch.Tensor, start: int) -> dict[str, float]:
    """The seam between the written prefix and the first generated frame, against the real clips.

    Args:
        videos: Prefix then continuation ``(B, 3, F, H, W)``.
        real: The real clips, at least as long.
        start: Index of the first generated frame.

    Returns:
        ``seam_jump``: mean absolute pixel change from frame ``start - 1`` to ``start``, divided by
        the real clips' at the same frames (1: as real; above: a jump); ``seam_motion``: the motion
        of the first generated horizon (px/frame), divided by the real clips'.
    """
    jump = (videos[:, :, start] - videos[:, :, start - 1]).abs().mean()
    real_jump = (real[:, :, start] - real[:, :, start - 1]).abs().mean()
    motion = window_motion(videos[:, :, start : start + HORIZON].float())
    real_motion = window_motion(real[:, :, start : start + HORIZON].float())
    return {
        "seam_jump": float(jump / real_jump.clamp_min(1e-6)),
        "seam_motion": motion / max(real_motion, 1e-6),
    }


def _summary(values: Sequence[float]) -> dict[str, Any]:
    mean, spread = mean_and_spread(values)
    return {"mean": mean, "spread": spread, "values": [float(v) for v in values]}


def evaluate_continuation(
    checkpoints: Mapping[str, Path],
    teacher_ckpt: Path,
    prompts: Sequence[str],
    seeds: Sequence[int],
    givens: Sequence[int],
    horizons: int,
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Score every student's continuations; see the module docstring.

    Returns:
        ``(results, strips)``: ``results[str(given)][row]`` holds ``horizons`` (``{h: {metric:
        summary}}``) and ``seam`` (``{measure: summary}``); ``strips[str(given)][row]`` is the first
        prompt's video of the first seed, ``"real"`` included, for the frame strip.
    """
    from sfpp.generate import load_generator

    length = horizons * HORIZON
    longest = max(givens) + length + 2 * HORIZON  # room for the held frames of any chunk size
    real = {seed: ground_truth(prompts, longest, seed=seed * len(prompts)) for seed in seeds}
    references: dict[tuple[int, int], FeatureStatistics] = {}  # (start, horizon): every seed's real windows

    def reference(start: int, horizon: int) -> FeatureStatistics:
        if (start, horizon) not in references:
            first = start + (horizon - 1) * HORIZON
            windows = torch.cat(
                [clips[:, :, first : first + HORIZON] for clips in real.values()]
            )  # (S*B, 3, K, H, W)
            references[start, horizon] = feature_statistics(list(windows.float().numpy()))
        return references[start, horizon]

    results: dict[str, Any] = {str(g): {} for g in givens}
    strips: dict[str, dict[str, torch.Tensor]] = {str(g): {} for g in givens}
    for row, checkpoint in checkpoints.items():
        generator = load_generator(checkpoint, teacher_ckpt=str(teacher_ckpt), device="cpu", progress=False)
        for given in givens:
            began = time.perf_counter()
            scores: dict[int, dict[str, list[float]]] = {h: {} for h in range(1, horizons + 1)}
            seam: dict[str, list[float]] = {}
            for seed in seeds:
                videos, start = continue_clips(generator, prompts, real[seed], given, length, seed)
                after = videos[:, :, start : start + length]  # (B, 3, horizons * K, H, W)
                real_after = real[seed][:, :, start : start + length]
                study = score_horizons({seed: after}, prompts, range(1, horizons + 1), {seed: real_after})
                for h in range(1, horizons + 1):
                    window = slice((h - 1) * HORIZON, h * HORIZON)
                    values = {name: study[h][name][0] for name in study[h]}
                    values["fd_to_continuation"] = fd_to_continuation(
                        after[:, :, window], reference(start, h)
                    )
                    for name, value in values.items():
                        scores[h].setdefault(name, []).append(value)
                for name, value in seam_ratios(videos, real[seed], start).items():
                    seam.setdefault(name, []).append(value)
                if seed == seeds[0]:
                    strips[str(given)][row] = videos[0]
                    strips[str(given)].setdefault("real", real[seed][0, :, : videos.shape[2]])
            results[str(given)][row] = {
                "horizons": {str(h): {n: _summary(v) for n, v in scores[h].items()} for h in scores},
                "seam": {n: _summary(v) for n, v in seam.items()},
            }
            console.print(
                f"{row}, given {given}: FD to the continuation at 1x/{horizons}x "
                f"{np.mean(scores[1]['fd_to_continuation']):.2f}/{np.mean(scores[horizons]['fd_to_continuation']):.2f}, "
                f"seam jump x{np.mean(seam['seam_jump']):.2f} ({time.perf_counter() - began:.0f} s)"
            )
    return results, strips


#: The teacher's numbers compared before and after its fine-tune (one horizon from noise).
TEACHER_METRICS = ("quality_fd", "clean_frames", "detected", "shape_accuracy", "motion_gap", "stability")


def check_teachers(
    teachers: Mapping[str, Path], prompts: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """The study's one-horizon scores of each teacher's own clips (does the fine-tune cost quality?)."""
    from sfpp.apps.study import real_videos, teacher_videos

    real = real_videos(prompts, HORIZON, seeds)
    checked = {}
    for key, path in teachers.items():
        scores = score_horizons(teacher_videos(path, prompts, seeds), prompts, (1,), real)[1]
        checked[key] = {name: _summary(scores[name]) for name in TEACHER_METRICS}
        console.print(f"teacher {key}: clean frames {checked[key]['clean_frames']['mean']:.3f}")
    return checked


def run_continuation(
    out: Path,
    steps: int,
    teacher_steps: int,
    seeds: Sequence[int],
    givens: Sequence[int],
    horizons: int,
    num_prompts: int,
    command: str,
    root: Path = Path("."),
) -> Path:
    """Train what is missing, evaluate, write ``<out>/results.json`` and the frame strips; return the JSON's path."""
    from sfpp.apps.continuation_report import plot_continuation, write_strips

    began = time.perf_counter()
    stages = continuation_stages(root, steps, teacher_steps)
    timings = run_stages(stages, cwd=root)
    trained = {t.name: round(t.seconds / 60, 1) for t in timings if not t.reused}
    checkpoints = {key: root / "checkpoints" / stage / "last.ckpt" for key, (_, stage, _) in ROWS.items()}
    teacher = root / "checkpoints" / TEACHER_STAGE / "last.ckpt"
    prompts = heldout_prompts()[:num_prompts]
    evaluation_began = time.perf_counter()
    results, strips = evaluate_continuation(checkpoints, teacher, prompts, seeds, givens, horizons)
    teachers = check_teachers(
        {"shipped": root / "checkpoints" / "toy_teacher" / "last.ckpt", "fine-tuned": teacher}, prompts, seeds
    )
    out.mkdir(parents=True, exist_ok=True)
    pictures = write_strips(strips, out, horizons)
    data = {
        "date": date.today().isoformat(),
        "commit": git_commit(),
        "machine": machine(),
        "command": command,
        "minutes": {
            "trained": trained,
            "evaluation": round((time.perf_counter() - evaluation_began) / 60, 1),
            "total": round((time.perf_counter() - began) / 60, 1),
        },
        "protocol": {
            "prompts": len(prompts),
            "eval_seeds": list(seeds),
            "given_frames": list(givens),
            "horizons": horizons,
            "horizon_frames": HORIZON,
            "student_steps": steps,
            "teacher_steps": teacher_steps,
            "training_seed": 1,
        },
        "rows": {key: label for key, (label, _, _) in ROWS.items()},
        "pictures": {given: path.name for given, path in pictures.items()} | {"plot": "continuation.png"},
        "results": results,
        "teachers": teachers,
    }
    plot_continuation(data, out / "continuation.png")
    path = out / "results.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    console.print(f"results: {path}")
    return path


def publish(out: Path, root: Path, notes: Sequence[str] = ()) -> None:
    """Copy the results and pictures into ``docs/results`` and regenerate the pages.

    Args:
        out: The measurement's output directory.
        root: Repository root.
        notes: Sentences about how the run went (the CPU shared with other work, a stage rerun),
            added to the JSON's ``notes`` before it is copied; the page prints them.
    """
    import shutil

    from sfpp.apps.results_pages import main as results_pages

    target = root / "docs" / "results"
    data = json.loads((out / "results.json").read_text())
    if notes:
        data["notes"] = [*data.get("notes", []), *notes]
        (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    shutil.copyfile(out / "results.json", target / "continuation.json")
    for name in data["pictures"].values():
        shutil.copyfile(out / name, target / name)
    results_pages(["--root", str(root)])


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m sfpp.apps.continuation``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/continuation"), help="output directory")
    parser.add_argument("--steps", type=int, default=500, help="optimisation steps of each student")
    parser.add_argument("--teacher-steps", type=int, default=600, help="fine-tuning steps of the teacher")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument("--given", type=int, nargs="+", default=[1, 8], help="frames given to continue")
    parser.add_argument(
        "--horizons", type=int, default=20, help="teacher horizons generated after the prefix"
    )
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts per evaluation seed")
    parser.add_argument(
        "--publish", action="store_true", help="copy the results into docs/ and render the pages"
    )
    parser.add_argument(
        "--publish-only", action="store_true", help="publish the results already in --out; train nothing"
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a sentence on how the run went, kept in the JSON's notes"
    )
    args = parser.parse_args(argv)
    if args.publish_only:
        if not (args.out / "results.json").exists():
            parser.error(f"--publish-only: no results.json in {args.out}; run the measurement first")
        publish(args.out, Path("."), args.note)
        return
    for name in ("steps", "teacher_steps", "horizons"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(g < 1 for g in args.given):
        parser.error(f"--given must be frame counts >= 1, got {args.given}")
    if not 1 <= args.prompts <= 64:
        parser.error(f"--prompts must be in 1..64, got {args.prompts}")
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m sfpp.apps.continuation", *given])
    run_continuation(
        args.out,
        args.steps,
        args.teacher_steps,
        args.eval_seeds,
        args.given,
        args.horizons,
        args.prompts,
        command,
    )
    if args.publish:
        publish(args.out, Path("."), args.note)


if __name__ == "__main__":
    main()
