"""``make study``: Self-Forcing vs Self-Forcing++ on the built-in world, from one Self-Forcing baseline.

``python -m sfpp.apps.study`` reuses (or trains) the toy teacher, its ODE pairs and the ODE-init
student of :mod:`sfpp.apps.demo`, then:

1. ``study_sf_base``: Self-Forcing (rollouts of one teacher horizon, N = K = 8 latent frames) from the
   ODE init until its validation quality past the horizon stops improving
   (``experiment=toy_self_forcing_base``, early stopping): the strongest baseline the budget allows.
2. From that checkpoint (weights, critic, EMA and optimisers), for every training seed, two
   continuations with the same number of extra optimisation steps (the same generator updates):
   ``Self-Forcing (continued)`` (N = K), the control, and ``Self-Forcing++ (continued)`` (N = 20 K
   = 160 frames, uniform windows, rolling cache, backward noise re-injection; critic steps share
   one rollout per group of 4, see ``stage.critic_windows_per_rollout``).
3. ``Self-Forcing++ + GRPO``: GRPO with the continuity reward after the Self-Forcing++ continuation
   of the first training seed (fixed in advance, not chosen by its scores).

``--ablations`` adds rows that each vary one setting of a continuation (:data:`ABLATIONS`: the
budget, the rollout length N, the window sampling, the initialisation), trained with the first
training seed beside that seed's continuations; ``make study-ablations`` runs three of them
(:data:`MAKE_ABLATIONS`) into ``artifacts/study_ablations``, and ``--publish`` then writes
``docs/results/study_ablations.json``; another set publishes as ``study_ablations_<keys>.json``
(:func:`published_name`).

``--scaling-budgets 250 500 750`` adds the compute-scaling curve: the first training seed's
continuations keep a checkpoint at every budget and are carried on to the largest
(:func:`scaling_stages`), and every point is scored into ``<out>/scaling``
(:mod:`sfpp.apps.scaling`; ``--publish`` writes ``docs/results/scaling.json``). ``--train-only``
trains every stage and stops before the evaluation.

Every student streams videos of 50 horizons for held-out prompts with several evaluation seeds and
is scored on the window that ends at 1, 5, 10, 20 and 50 horizons (:mod:`sfpp.apps.study_metrics`).
Real videos of the same prompts (every horizon) and the teacher's own clips (its horizon) frame the
numbers. Under ``--out`` (``artifacts/study``): ``results.json`` (every value per evaluation seed,
the training costs, the target checks, the pictures' choice), ``table.md``, ``quality_vs_horizon.png``,
``frames.png`` and ``side_by_side.gif`` (the cases :mod:`sfpp.apps.study_pictures` chooses by rule)
and ``side_by_side_seed<s>.mp4`` (every model on the first prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from sfpp.apps.pipeline import StageTiming, git_commit, machine, run_stages
from sfpp.apps.results_pages import study_page
from sfpp.apps.study_metrics import Scores, score_horizons
from sfpp.apps.study_pictures import (
    case_numbers,
    choose_cases,
    feature_distance,
    gap_horizon,
    write_case_gif,
    write_case_strip,
)
from sfpp.apps.study_report import (
    REAL_LABEL,
    SF_CONTINUED,
    SFPP_CONTINUED,
    TEACHER_LABEL,
    check_target,
    group_results,
    plot_results,
    write_frames,
)
from sfpp.apps.study_stages import (
    ABLATIONS,
    BASE_STAGE,
    HORIZONS,
    MAKE_ABLATIONS,
    SFPP_HORIZONS,
    Ablation,
    DMDSchedule,
    StudyModel,
    ablation_stages,
    continuation_stages,
    scaling_points,
    scaling_stages,
    shared_stages,
)
from sfpp.apps.study_videos import console, generate_batch, real_videos, teacher_videos
from sfpp.io.video import write_video
from sfpp.world import HORIZON, heldout_prompts

__all__ = [
    "ABLATIONS",
    "Ablation",
    "BASE_STAGE",
    "DMDSchedule",
    "HORIZONS",
    "MAKE_ABLATIONS",
    "REAL_LABEL",
    "TEACHER_LABEL",
    "StudyModel",
    "ablation_stages",
    "continuation_stages",
    "evaluate_study",
    "generate_batch",
    "main",
    "publish",
    "real_videos",
    "run_study",
    "shared_stages",
    "teacher_videos",
]


def write_pictures(
    out: Path,
    results: dict[str, Any],
    kept: dict[str, dict[int, torch.Tensor]],
    real: dict[int, torch.Tensor],
    prompts: Sequence[str],
) -> dict[str, Any]:
    """The frame strip and the animation, of the cases :mod:`sfpp.apps.study_pictures` chooses by rule.

    Writes ``frames.png`` and ``side_by_side.gif`` under ``out``.

    Args:
        out: Output directory.
        results: The results so far (their methods' means give the horizon).
        kept: ``{method: {seed: (B, 3, F, H, W)}}`` of the first Self-Forcing and Self-Forcing++ students.
        real: ``{seed: (B, 3, F, H, W)}`` real videos of the same prompts.
        prompts: The ``B`` prompts.

    Returns:
        What was chosen and why, for ``results.json``: the horizon, the rule, each case's seed,
        prompt and numbers.
    """
    horizon = gap_horizon(results, SF_CONTINUED, SFPP_CONTINUED)
    distances = {
        method: {seed: feature_distance(videos, horizon) for seed, videos in by_seed.items()}
        for method, by_seed in kept.items()
    }
    chosen = choose_cases(distances[SF_CONTINUED], distances[SFPP_CONTINUED])
    cases = []
    for name, case in chosen.items():
        seed, index = case["seed"], case["prompt_index"]
        videos = {
            SF_CONTINUED: kept[SF_CONTINUED][seed][index],
            SFPP_CONTINUED: kept[SFPP_CONTINUED][seed][index],
            "real video": real[seed][index],
        }
        title = f"{name} difference: '{prompts[index]}', seed {seed}"
        short = f"{name}: seed {seed}, prompt {index + 1}"
        cases.append(
            {"title": title, "short": short, "videos": videos, "numbers": case_numbers(videos, horizon)}
        )
        case |= {"prompt": prompts[index], "numbers": cases[-1]["numbers"]}
    write_case_strip(out / "frames.png", cases, horizon)
    write_case_gif(out / "side_by_side.gif", cases, horizon)
    return {
        "horizon": horizon,
        "rule": "the horizon after 1x with the largest Self-Forcing minus Self-Forcing++ FD; per (evaluation "
        "seed, prompt) the feature distance (FD mean term of the video alone) on that window; the pairs "
        "at the median and at the largest Self-Forcing minus Self-Forcing++ difference",
        "cases": chosen,
    }


def _training_costs(
    out: Path, timings: Sequence[StageTiming], steps: dict[str, tuple[int, int]], schedule: DMDSchedule
) -> dict[str, dict[str, float]]:
    """Minutes, steps and updates per minute of the trained stages, kept across runs in ``training.json``.

    Args:
        out: Output directory (holds ``training.json``).
        timings: The stages run now (reused ones keep their earlier entry).
        steps: ``{name: (first step, optimisation steps)}`` of the DMD stages after the baseline.
        schedule: The baseline's schedule of critic and generator updates (counts the generator
            updates of those steps).
    """
    path = out / "training.json"
    costs: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}
    for timing in timings:
        if timing.reused:
            continue
        entry: dict[str, float] = {"minutes": timing.seconds / 60}
        if timing.name in steps:
            first, count = steps[timing.name]
            updates = replace(schedule, step=first).generator_updates(count)
            entry |= {
                "steps": count,
                "generator_updates": updates,
                "steps_per_minute": count / entry["minutes"],
                "generator_updates_per_minute": updates / entry["minutes"],
            }
        costs[timing.name] = entry
    path.write_text(json.dumps(costs, indent=2) + "\n")
    return costs


def evaluate_study(
    out: Path,
    teacher_ckpt: Path,
    models: Sequence[StudyModel],
    protocol: dict[str, Any],
    training: dict[str, dict[str, float]] | None = None,
    eval_seeds: Sequence[int] = (0, 1, 2),
    num_prompts: int = 16,
    horizons: Sequence[int] = HORIZONS,
    command: str = "python -m sfpp.apps.study",
    root: Path = Path("."),
) -> dict[str, Any]:
    """Score every student and the references at every horizon; write the results, table, plot, frames, videos.

    Args:
        out: Output directory.
        teacher_ckpt: The toy teacher (its text encoder conditions the students; its clips are a row).
        models: The students.
        protocol: Settings recorded in the results (the training's; the evaluation's are added).
        training: Training costs per stage (``training.json``).
        eval_seeds: Seeds of the evaluation videos.
        num_prompts: Held-out prompts per evaluation seed.
        horizons: Evaluation horizons; the videos are the longest of them.
        command: The command line recorded in the results.
        root: Repository root (for the commit).

    Returns:
        The content of ``results.json``.
    """
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(heldout_prompts(2)[:num_prompts])
    num_frames = max(horizons) * HORIZON
    console.rule("real videos and the teacher's clips (references)")
    real = real_videos(prompts, num_frames, eval_seeds)
    scores: dict[str, Scores] = {REAL_LABEL: score_horizons(real, prompts, horizons, real)}
    scores[TEACHER_LABEL] = score_horizons(
        teacher_videos(teacher_ckpt, prompts, eval_seeds), prompts, (1,), real
    )
    first_prompt: dict[int, list[torch.Tensor]] = {seed: [] for seed in eval_seeds}
    kept: dict[str, dict[int, torch.Tensor]] = {}  # the pictures' videos: each method's first student
    for model in models:
        console.rule(f"{model.label}: {len(eval_seeds)} seeds x {len(prompts)} prompts x {num_frames} frames")
        videos = generate_batch(model.checkpoint, teacher_ckpt, prompts, num_frames, eval_seeds)
        for seed in eval_seeds:
            first_prompt[seed].append(videos[seed][0])
        scores[model.label] = score_horizons(videos, prompts, horizons, real)
        if model.method in (SF_CONTINUED, SFPP_CONTINUED) and model.method not in kept:
            kept[model.method] = videos
    for seed in eval_seeds:
        first_prompt[seed].append(real[seed][0])
        write_video(
            out / f"side_by_side_seed{seed}.mp4", torch.cat(first_prompt[seed], dim=-1), fps=8, upscale=8
        )
    labels = [model.label for model in models] + [REAL_LABEL]
    if len(kept) < 2:  # no pair of continuations to choose from: the first prompt's videos
        shown = tuple(h for h in (1, 20, 50) if h <= max(horizons))
        write_frames(dict(zip(labels, first_prompt[eval_seeds[0]], strict=True)), shown, out / "frames.png")
    evaluation_minutes = (time.perf_counter() - began) / 60
    results: dict[str, Any] = {
        "measured": date.today().isoformat(),
        "commit": git_commit(root),
        "command": command,
        "machine": machine(),
        "minutes": protocol.get("training_minutes", 0.0) + evaluation_minutes,
        "evaluation_minutes": evaluation_minutes,
        "protocol": {
            **protocol,
            "prompts": len(prompts),
            "eval_seeds": list(eval_seeds),
            "horizons": list(horizons),
        },
        "training": training or {},
        "models": {model.label: {"method": model.method, "train_seed": model.train_seed} for model in models},
        "scores": {label: {str(h): v for h, v in by_h.items()} for label, by_h in scores.items()},
    }
    results["methods"] = group_results(results["scores"], {model.label: model.method for model in models})
    results["target"] = check_target(results)
    if len(kept) == 2:
        results["pictures"] = write_pictures(out, results, kept, real, prompts)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = out / "table.md"
    table.write_text(study_page(results))
    plot_results(results, out / "quality_vs_horizon.png")
    console.print(table.read_text())
    console.print(f"results: {out / 'results.json'}\nplot: {out / 'quality_vs_horizon.png'}")
    return results


def run_study(
    out: Path,
    eval_seeds: Sequence[int] = (0, 1, 2),
    train_seeds: Sequence[int] = (1, 2),
    num_prompts: int = 16,
    extra_steps: int = 500,
    grpo_steps: int = 60,
    force: Sequence[str] = (),
    root: Path = Path("."),
    horizons: Sequence[int] = HORIZONS,
    command: str = "python -m sfpp.apps.study",
    ablations: Sequence[str] = (),
    scaling_budgets: Sequence[int] = (),
    train_only: bool = False,
) -> dict[str, Any] | None:
    """Train what is missing (:func:`shared_stages`, then :func:`continuation_stages`), then :func:`evaluate_study`.

    Args:
        out: Output directory.
        eval_seeds: Seeds of the evaluation videos.
        train_seeds: Training seeds of the continuations.
        num_prompts: Held-out prompts per evaluation seed.
        extra_steps: Optimisation steps of each continuation.
        grpo_steps: GRPO steps (0: no GRPO row).
        force: Stages to retrain even if finished.
        root: Repository root.
        horizons: Evaluation horizons.
        command: The command line recorded in the results.
        ablations: Ablations of :data:`ABLATIONS` trained with the first training seed, each a row
            of its own beside that seed's continuations.
        scaling_budgets: Extra-step budgets of the compute-scaling curve (empty: no curve): the
            first seed's continuations keep a checkpoint at each; after the study's evaluation,
            :func:`scaling_stages` carry them on to the largest and
            :func:`sfpp.apps.scaling.evaluate_scaling` scores every point into ``<out>/scaling``.
        train_only: Train every stage and stop before the evaluation (returns ``None``).
    """
    out.mkdir(parents=True, exist_ok=True)
    if ablations:
        ablation_stages(root, 0, 1, train_seeds[0], ablations)  # unknown names fail before training
    shared = shared_stages(root)
    timings = run_stages(shared, force=force, cwd=root)
    base = DMDSchedule.from_checkpoint(shared[-1].done_file)
    base_step, updates = base.step, base.generator_updates(extra_steps)
    continuations, models = continuation_stages(
        root, base_step, extra_steps, train_seeds, grpo_steps, scaling_budgets
    )
    steps = {s.name: (base_step, extra_steps) for s in continuations if s.name != "study_sfpp_grpo"}
    extra, ablated, ablated_steps = ablation_stages(root, base_step, extra_steps, train_seeds[0], ablations)
    timings += run_stages([*continuations, *extra], force=force, cwd=root)
    models += ablated
    steps |= ablated_steps
    protocol = {
        "train_seeds": list(train_seeds),
        "horizon_frames": HORIZON,
        "base_step": base_step,
        "extra_steps": extra_steps,
        "extra_generator_updates": updates,
        "sfpp_rollout_frames": SFPP_HORIZONS * HORIZON,
        "grpo_steps": grpo_steps,
        "ablations": {ABLATIONS[key].label: ABLATIONS[key].hypothesis for key in ablations},
    }
    training = _training_costs(out, timings, steps, base)
    # the stages' own minutes, kept in training.json, so that a rerun that reuses them counts them too
    protocol["training_minutes"] = sum(training[t.name]["minutes"] for t in timings if t.name in training)
    results = None
    if not train_only:
        results = evaluate_study(
            out,
            shared[0].done_file,
            models,
            protocol,
            training,
            eval_seeds,
            num_prompts,
            horizons,
            command,
            root,
        )
    # the curve after the study: its extra training and evaluation do not delay the study's results
    scaling = scaling_stages(root, base_step, extra_steps, train_seeds[0], scaling_budgets)
    scaling_steps = {s.name: (base_step + extra_steps, max(scaling_budgets) - extra_steps) for s in scaling}
    training = _training_costs(out, run_stages(scaling, force=force, cwd=root), scaling_steps, base)
    if train_only:
        console.print("trained every stage; evaluate with the same command without --train-only")
    elif scaling_budgets:
        from sfpp.apps.scaling import evaluate_scaling

        evaluate_scaling(
            out / "scaling",
            shared[0].done_file,
            scaling_points(root, base_step, extra_steps, train_seeds[0], scaling_budgets),
            training,
            eval_seeds,
            num_prompts,
            horizons,
            command,
            root,
            train_seed=train_seeds[0],
            known=_study_points(results, train_seeds[0], extra_steps),
        )
    return results


def _study_points(
    results: dict[str, Any] | None, seed: int, extra_steps: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """The curve's points the study has scored already: the baseline (0) and seed ``seed``'s continuations."""
    scores = (results or {}).get("scores", {})
    known = {}
    for label, method, budget in (
        ("Self-Forcing (baseline)", "Self-Forcing (baseline)", 0),
        (f"{SF_CONTINUED}, training seed {seed}", SF_CONTINUED, extra_steps),
        (f"{SFPP_CONTINUED}, training seed {seed}", SFPP_CONTINUED, extra_steps),
    ):
        if label in scores:
            known[method, budget] = scores[label]
    return known


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m sfpp.apps.study``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/study"), help="output directory")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument(
        "--train-seeds", type=int, nargs="+", default=[1, 2], help="training seeds of the continuations"
    )
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts per evaluation seed")
    parser.add_argument(
        "--extra-steps", type=int, default=500, help="optimisation steps of each continuation"
    )
    parser.add_argument("--grpo-steps", type=int, default=60, help="GRPO steps (0: no GRPO row)")
    parser.add_argument("--force", nargs="*", default=[], help="stages to retrain even if finished")
    parser.add_argument(
        "--scaling-budgets",
        type=int,
        nargs="*",
        default=[],
        help="extra-step budgets of the compute-scaling curve (e.g. 250 500 750): the first training "
        "seed's continuations are carried on to the largest and every budget is evaluated into <out>/scaling",
    )
    parser.add_argument(
        "--train-only", action="store_true", help="train every stage and stop before the evaluation"
    )
    parser.add_argument(
        "--ablations",
        nargs="+",
        default=[],
        choices=sorted(ABLATIONS),
        help="also train these ablations with the first training seed (published as study_ablations, "
        "or study_ablations_<keys> for a set other than make study-ablations)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="copy results.json, the plot, the frames and the GIF into docs/ and regenerate the results pages",
    )
    parser.add_argument(
        "--publish-only",
        action="store_true",
        help="train and evaluate nothing: publish the results already in --out (under the name "
        "their ablations give: study, study_ablations or study_ablations_<keys>)",
    )
    args = parser.parse_args(argv)
    if args.publish_only:
        if not (args.out / "results.json").exists():
            parser.error(f"--publish-only: no results.json in {args.out}; run the study first")
        publish(args.out, Path("."), name=published_name(args.out / "results.json"))
        return
    if not 1 <= args.prompts <= 64:
        parser.error(f"--prompts must be in 1..64, got {args.prompts}")
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m sfpp.apps.study", *given])
    run_study(
        args.out,
        args.eval_seeds,
        args.train_seeds,
        args.prompts,
        args.extra_steps,
        args.grpo_steps,
        args.force,
        command=command,
        ablations=args.ablations,
        scaling_budgets=args.scaling_budgets,
        train_only=args.train_only,
    )
    if args.publish and not args.train_only:
        publish(args.out, Path("."), name=published_name(args.out / "results.json"))


def published_name(results: Path) -> str:
    """The name a run publishes under, by the ablations its ``results.json`` holds.

    ``study`` without ablations; ``study_ablations`` for those of ``make study-ablations``
    (:data:`MAKE_ABLATIONS`); ``study_ablations_<keys>`` (sorted keys of :data:`ABLATIONS`, joined
    by ``_``) for any other set, so that it does not replace that run's page.

    Raises:
        ValueError: For an ablation label that no entry of :data:`ABLATIONS` has.
    """
    labels = json.loads(results.read_text())["protocol"].get("ablations") or {}
    if not labels:
        return "study"
    keys = {key: ablation.label for key, ablation in ABLATIONS.items()}
    unknown = sorted(set(labels) - set(keys.values()))
    if unknown:
        raise ValueError(f"{results}: ablations {unknown} are not in ABLATIONS ({sorted(keys)})")
    chosen = sorted(key for key, label in keys.items() if label in labels)
    if chosen == sorted(MAKE_ABLATIONS):
        return "study_ablations"
    return "study_ablations_" + "_".join(chosen)


def publish(out: Path, root: Path, name: str = "study") -> None:
    """Copy a study's results into the docs and regenerate the pages.

    Args:
        out: The study's output directory.
        root: Repository root.
        name: ``study`` (``docs/results/study*`` and the README's GIF) or an ablation run's
            :func:`published_name` (``docs/results/<name>*``).
    """
    import shutil

    from sfpp.apps.results_pages import main as results_pages

    docs = root / "docs"
    copies = [
        ("results.json", docs / "results" / f"{name}.json"),
        ("quality_vs_horizon.png", docs / "results" / f"{name}_quality_vs_horizon.png"),
        ("frames.png", docs / "results" / f"{name}_frames.png"),
    ]
    if name == "study":
        copies.append(("side_by_side.gif", docs / "study_side_by_side.gif"))
        if (out / "scaling" / "results.json").exists():
            copies += [
                ("scaling/results.json", docs / "results" / "scaling.json"),
                ("scaling/scaling.png", docs / "results" / "scaling.png"),
            ]
    for source, target in copies:
        shutil.copyfile(out / source, target)
        console.print(f"published {target}")
    results_pages(["--root", str(root)])


if __name__ == "__main__":
    main()
