"""``python -m sfpp.world.report``: how good is a toy teacher, and which words of the prompt does it use?

Samples the teacher of a ``toy_teacher`` checkpoint (its EMA weights with the sampler that writes
the ODE pairs: 32 Euler steps, CFG 2) on held-out prompts and reports:

* the world's object scores (:class:`~sfpp.world.objects.WorldObjectScore`: clean frames,
  objects detected, shape accuracy, box edges on the model's patch grid, motion, jumps) of the
  teacher's clips next to real clips of the same prompts;
* the shapes the teacher drew for each prompted shape (a confusion table);
* which words it uses (:func:`~sfpp.world.word_swap.denoiser_word_use`): real clips noised to
  mid noise levels are denoised with the true prompts and with every colour (or shape) word
  swapped, and the estimates are scored against the true prompts. A kind of word the teacher reads
  costs accuracy when swapped; one it ignores costs nothing;
* which word it would choose (:func:`~sfpp.world.word_swap.denoiser_word_choice`): the teacher
  as a classifier, picking the colour (or shape) word of a real clip's first object whose clean
  estimate fits the clip best, over noise levels from 0.3 to 0.9;
* how far its clean estimate is from the best possible
  (:func:`~sfpp.world.ideal_denoiser.denoiser_excess_error`): on one-object clips the
  Bayes-optimal denoiser is computable exactly, frame by frame, with and without the shape word;
* where it decides an object's shape (:func:`~sfpp.world.ideal_denoiser.shape_handover`): it
  samples one-object clips down to a noise level, the ideal denoiser that knows the colour but not
  the shape finishes them, and the finished clips' shape accuracy says how much of the prompted
  shape the teacher had drawn by then.

Everything is printed as a table and written to ``<out>/report.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sfpp.world.clips import HORIZON, ground_truth
from sfpp.world.grammar import SHAPES, heldout_prompts
from sfpp.world.ideal_denoiser import denoiser_excess_error, one_object_clips, shape_handover
from sfpp.world.objects import WorldObjectScore
from sfpp.world.teacher_sampler import TeacherClipSampler
from sfpp.world.word_swap import denoiser_word_choice, denoiser_word_use

__all__ = ["main", "teacher_report"]

#: Noise levels of the word check: low enough that objects are located, high enough that shapes are open.
WORD_CHECK_SIGMAS: tuple[float, ...] = (0.4, 0.6)
#: The kinds of words checked and the score that shows each.
WORD_CHECKS: dict[str, str] = {"colour": "detected_fraction", "shape": "shape_accuracy"}
#: Noise levels of the word-choice check (shapes are open at the upper ones, located at the lower).
WORD_CHOICE_SIGMAS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
#: Noise levels of the comparison with the ideal denoiser.
IDEAL_SIGMAS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
#: Levels at which the shape-blind ideal finishes the teacher's one-object samples (0: the teacher alone).
HANDOVER_SIGMAS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
_SCORES = (
    "clean_frame_fraction",
    "detected_fraction",
    "shape_accuracy",
    "grid_aligned_fraction",
    "mean_motion_px",
    "jump_fraction",
)


def teacher_report(
    checkpoint: str | Path, num_prompts: int = 32, seed: int = 0, out: str | Path | None = None
) -> dict[str, Any]:
    """Score a toy teacher's clips against real clips and check which kinds of prompt words it reads.

    Args:
        checkpoint: A ``toy_teacher`` Lightning checkpoint.
        num_prompts: Held-out prompts to sample (the first ones, in the split's order); at most
            the number of held-out prompts.
        seed: Seed of the teacher's noise and of the real clips' scenes.
        out: Directory for ``report.json`` (nothing is written when ``None``).

    Returns:
        ``{"teacher": scores, "real": scores, "shape_confusion": {prompted: {drawn: count}},
        "word_use": {sigma: {"true" | attribute: scores}},
        "word_choice": {attribute: {"accuracy", "error_gap"}},
        "ideal_gap": {sigma: {"model", "ideal", "ideal_colour_only", "excess"}},
        "shape_handover": {"teacher" | "ideal": {sigma: {"clean_frame_fraction", "detected_fraction",
        "shape_accuracy"}}}}``; the ideal's row is the reference.

    Raises:
        ValueError: For a prompt count outside ``1..len(heldout_prompts())``.
        FileNotFoundError: If the checkpoint does not exist.
    """
    prompts = heldout_prompts()
    if not 1 <= num_prompts <= len(prompts):
        raise ValueError(
            f"num_prompts must be in 1..{len(prompts)} (the held-out prompts), got {num_prompts}"
        )
    prompts = prompts[:num_prompts]
    sample = TeacherClipSampler.from_checkpoint(checkpoint)
    metric = WorldObjectScore()
    teacher_clips = sample(prompts, seed)
    real_clips = ground_truth(prompts, HORIZON, seed=seed)
    teacher_stats, real_stats = (
        metric.batch_stats(teacher_clips, prompts),
        metric.batch_stats(real_clips, prompts),
    )
    teacher_scores, real_scores = teacher_stats.scores(), real_stats.scores()
    report = {
        "teacher": {key: teacher_scores[key] for key in _SCORES},
        "real": {key: real_scores[key] for key in _SCORES},
        "shape_confusion": teacher_stats.confusion(),
        "word_use": denoiser_word_use(
            sample.denoise, real_clips, prompts, WORD_CHECK_SIGMAS, metric, tuple(WORD_CHECKS), seed=seed
        ),
        "word_choice": {
            attribute: denoiser_word_choice(
                sample.denoise, real_clips, prompts, WORD_CHOICE_SIGMAS, attribute, seed=seed
            )
            for attribute in WORD_CHECKS
        },
        "ideal_gap": denoiser_excess_error(
            sample.denoise, IDEAL_SIGMAS, num_frames=teacher_clips.shape[2], seed=seed
        ),
        "shape_handover": {
            name: shape_handover(
                denoise, sample.sampler.grid(), HANDOVER_SIGMAS, num_frames=teacher_clips.shape[2], seed=seed
            )
            for name, denoise in (
                ("teacher", sample.guided_denoise),
                ("ideal", one_object_clips(18, teacher_clips.shape[2], seed=seed).denoiser()),
            )
        },
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print(report: dict[str, Any], checkpoint: str, num_prompts: int) -> None:
    console = Console(highlight=False)
    scores = Table(title=f"{checkpoint}: {num_prompts} held-out prompts, {HORIZON} frames each")
    scores.add_column("clips")
    for key in _SCORES:
        scores.add_column(key.replace("_", " "), justify="right")
    for name in ("teacher", "real"):
        scores.add_row(name, *(f"{report[name][key]:.3f}" for key in _SCORES))
    console.print(scores)
    confusion = Table(title="shapes the teacher drew (object-frames), by the shape its prompt named")
    confusion.add_column("prompted")
    for shape in SHAPES:
        confusion.add_column(f"drawn {shape}", justify="right")
    for prompted, row in report["shape_confusion"].items():
        confusion.add_row(prompted, *(str(row[shape]) for shape in SHAPES))
    console.print(confusion)
    words = Table(
        title="word use: real clips noised to sigma, denoised with true or swapped words, scored vs the true prompts"
    )
    words.add_column("sigma")
    words.add_column("score")
    for name in ("true", *WORD_CHECKS):
        words.add_column("true prompts" if name == "true" else f"{name} swapped", justify="right")
    for sigma, by_variant in report["word_use"].items():
        for key in WORD_CHECKS.values():
            words.add_row(
                f"{sigma:g}", key.replace("_", " "), *(f"{values[key]:.3f}" for values in by_variant.values())
            )
    console.print(words)
    choice = Table(title="word choice: the teacher as a classifier of real clips' first-object words")
    for column in ("words", "accuracy", "chance", "error gap"):
        choice.add_column(column, justify="left" if column == "words" else "right")
    chance = {"colour": "1/6-1/5", "shape": "1/3"}
    for attribute, values in report["word_choice"].items():
        choice.add_row(
            attribute, f"{values['accuracy']:.3f}", chance[attribute], f"{values['error_gap']:+.3f}"
        )
    console.print(choice)
    ideal = Table(
        title="clean-estimate error (MSE) on 18 one-object clips next to the Bayes-optimal denoiser's, frame by frame"
    )
    for column in ("sigma", "teacher", "ideal", "ideal without shape word", "teacher - ideal"):
        ideal.add_column(column, justify="right")
    for sigma, values in report["ideal_gap"].items():
        ideal.add_row(
            f"{sigma:g}",
            *(f"{values[key]:.4f}" for key in ("model", "ideal", "ideal_colour_only")),
            f"{values['excess']:+.4f}",
        )
    console.print(ideal)
    handover = Table(
        title="shape decided: 18 one-object clips sampled down to sigma, then finished by the ideal "
        "denoiser without the shape word (sigma 0: the sampler alone; the shape-blind ideal alone is at chance)"
    )
    handover.add_column("sampler")
    handover.add_column("score")
    for sigma in HANDOVER_SIGMAS:
        handover.add_column(f"sigma {sigma:g}", justify="right")
    for name, by_sigma in report["shape_handover"].items():
        for key in ("clean_frame_fraction", "shape_accuracy"):
            handover.add_row(
                name if key == "clean_frame_fraction" else "",
                key.replace("_", " "),
                *(f"{by_sigma[sigma][key]:.3f}" for sigma in HANDOVER_SIGMAS),
            )
    console.print(handover)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument(
        "--checkpoint", default="checkpoints/toy_teacher/last.ckpt", help="toy_teacher checkpoint"
    )
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts to sample")
    parser.add_argument("--seed", type=int, default=0, help="noise and scene seed")
    parser.add_argument("--out", default="artifacts/teacher_report", help="directory of report.json")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also write docs/results/teacher.json (with the date, commit and command) for the results pages",
    )
    args = parser.parse_args(argv)
    report = teacher_report(args.checkpoint, args.prompts, args.seed, args.out)
    _print(report, args.checkpoint, args.prompts)
    if args.publish:
        given = list(sys.argv[1:] if argv is None else argv)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        provenance = {
            "measured": date.today().isoformat(),
            "commit": commit.stdout.strip() or "unknown",
            "command": " ".join(["python -m sfpp.world.report", *given]),
            "checkpoint": str(args.checkpoint),
        }
        target = Path("docs/results/teacher.json")
        target.write_text(json.dumps(provenance | report, indent=2) + "\n")
        print(f"published {target}")
    return report


def cli() -> None:
    """The ``sfpp-teacher-report`` console entry point (exits 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
