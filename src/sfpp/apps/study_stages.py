"""The stages of ``make study``, each a :class:`~sfpp.apps.pipeline.StageRun` of ``sfpp.train``.

The shared pipeline, the Self-Forcing baseline, its continuations, GRPO and the ablations.

The continuations and ablations resume the baseline's checkpoint (weights, critic, EMA and
optimisers) and stop after a fixed number of extra optimisation steps, so that every row of one
comparison spends the same generator updates (or a stated multiple of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sfpp.apps.pipeline import StageRun, toy_stages
from sfpp.apps.study_report import SF_CONTINUED, SFPP_CONTINUED
from sfpp.stages.dmd import update_kind
from sfpp.world import HORIZON

__all__ = [
    "ABLATIONS",
    "Ablation",
    "BASE_STAGE",
    "DMDSchedule",
    "HORIZONS",
    "MAKE_ABLATIONS",
    "SFPP_HORIZONS",
    "StudyModel",
    "ScalingPoint",
    "ablation_stages",
    "budget_checkpoint",
    "continuation_stages",
    "scaling_points",
    "scaling_stages",
    "shared_stages",
]

#: Lightning's notice, on resuming a checkpoint, that callbacks it was saved with are missing: a
#: continuation resumes the baseline on purpose with another checkpoint interval and without early
#: stopping, so those callbacks' saved states are meant to be left behind.
RESUMED_WITH_OTHER_CALLBACKS = "Be aware that when using `ckpt_path`"

#: Evaluation horizons, in teacher horizons (the toy RoPE table allows 1024 latent frames).
HORIZONS: tuple[int, ...] = (1, 5, 10, 20, 50)
#: Rollout of the Self-Forcing++ continuations, in teacher horizons.
SFPP_HORIZONS = 20
#: Name of the Self-Forcing baseline stage.
BASE_STAGE = "study_sf_base"


@dataclass(frozen=True)
class StudyModel:
    """A trained student of the study.

    Attributes:
        label: Row label (``"Self-Forcing++ (continued), training seed 1"``).
        method: The method it belongs to (rows of one method are aggregated over training seeds).
        checkpoint: Its Lightning checkpoint.
        train_seed: Its training seed (``None`` for the baseline).
    """

    label: str
    method: str
    checkpoint: Path
    train_seed: int | None


@dataclass(frozen=True)
class Ablation:
    """A variant of one continuation that tests one hypothesis of the method.

    Attributes:
        label: Row label (the method of its row).
        hypothesis: What the row tests, in a sentence (shown on the results page).
        experiment: The Hydra experiment it trains.
        overrides: Its overrides on top of the experiment.
        step_factor: Its optimisation steps, in units of the continuations' extra steps.
        from_init: Start from the ODE init (the experiment's own start) instead of the baseline; it
            then trains ``base_step + step_factor * extra_steps`` steps, as many as the baseline and
            a continuation together.
    """

    label: str
    hypothesis: str
    experiment: str
    overrides: tuple[str, ...]
    step_factor: int = 1
    from_init: bool = False


_SFPP_OVERRIDES = (f"stage.rollout_frames={SFPP_HORIZONS * HORIZON}", "stage.critic_windows_per_rollout=4")

#: The ablations of ``--ablations``; each varies one setting of a continuation, fixed before any run.
ABLATIONS: dict[str, Ablation] = {
    "budget": Ablation(
        "Self-Forcing (continued), 3x the steps",
        "Budget: is Self-Forcing++ better only because an update costs about 3x more? Self-Forcing "
        "continued with 3x the steps (and generator updates) spends about Self-Forcing++'s time.",
        "toy_self_forcing",
        (),
        step_factor=3,
    ),
    "rollout_length": Ablation(
        "Self-Forcing++ (continued), N = 5K",
        "Rollout length N: Self-Forcing++ with rollouts of 5 teacher horizons (40 frames) instead of 20.",
        "toy_extend",
        ("stage.rollout_frames=40", "stage.critic_windows_per_rollout=4"),
    ),
    "window_sampling": Ablation(
        "Self-Forcing++ (continued), last window",
        "Window sampling: the window is always the rollout's last one instead of a uniform draw.",
        "toy_extend",
        (*_SFPP_OVERRIDES, "stage.window_mode=last"),
    ),
    "init": Ablation(
        "Self-Forcing++ from the ODE init",
        "Initialisation: Self-Forcing++ from the ODE init, with as many steps as the baseline and a "
        "continuation together, instead of from the Self-Forcing baseline.",
        "toy_extend",
        _SFPP_OVERRIDES,
        from_init=True,
    ),
}


#: The ablations of ``make study-ablations`` (published as ``study_ablations``).
MAKE_ABLATIONS: tuple[str, ...] = ("budget", "rollout_length", "window_sampling")


def shared_stages(root: Path = Path(".")) -> list[StageRun]:
    """Teacher, ODE pairs, ODE init (those of ``make demo``), then the Self-Forcing baseline."""
    base = StageRun(
        BASE_STAGE,
        "sfpp.train",
        ["experiment=toy_self_forcing_base", f"task_name={BASE_STAGE}"],
        root / "checkpoints" / BASE_STAGE / "last.ckpt",
    )
    return [*toy_stages(root)[:3], base]


@dataclass(frozen=True)
class DMDSchedule:
    """Where a DMD checkpoint stands in its schedule of critic and generator updates."""

    step: int
    critic_updates_per_generator: int
    critic_warmup_steps: int

    @classmethod
    def from_checkpoint(cls, path: Path) -> DMDSchedule:
        """The step and the schedule's settings a DMD Lightning checkpoint was written with."""
        payload = torch.load(path, map_location="cpu", weights_only=False)
        hparams = payload.get("hyper_parameters") or {}
        return cls(
            int(payload["global_step"]),
            int(hparams["critic_updates_per_generator"]),
            int(hparams["critic_warmup_steps"]),
        )

    def generator_updates(self, steps: int) -> int:
        """Generator updates among the ``steps`` optimisation steps after this checkpoint."""
        return sum(
            update_kind(s, self.critic_updates_per_generator, self.critic_warmup_steps) == "generator"
            for s in range(self.step, self.step + steps)
        )


#: The two continued methods: ``{key: (method, experiment, overrides)}``; ``key`` names the stages.
CONTINUED_METHODS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sf": (SF_CONTINUED, "toy_self_forcing", ()),
    "sfpp": (SFPP_CONTINUED, "toy_extend", _SFPP_OVERRIDES),
}


def _checkpoint_interval(extra_steps: int, budgets: Sequence[int]) -> list[str]:
    """Overrides that keep a checkpoint at every budget (every ``gcd`` of them), or one per run without budgets."""
    if not budgets:
        return [f"callbacks.model_checkpoint.every_n_train_steps={extra_steps}"]
    interval = math.gcd(*budgets)
    return [
        f"callbacks.model_checkpoint.every_n_train_steps={interval}",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]


def _continuation(
    root: Path,
    name: str,
    experiment: str,
    source: Path,
    seed: int,
    stop: int,
    validate_every: int,
    budgets: Sequence[int],
    extra: Sequence[str],
    extra_steps: int,
) -> StageRun:
    """A DMD run that resumes ``source`` (weights, critic, EMA, optimisers) and trains to step ``stop``.

    Args:
        root: Repository root.
        name: Stage and task name.
        experiment: Hydra experiment.
        source: The checkpoint it resumes.
        seed: Training seed.
        stop: Global step it stops at.
        validate_every: Steps between validations.
        budgets: Scaling budgets to keep checkpoints at (:func:`_checkpoint_interval`).
        extra: The method's own overrides.
        extra_steps: The study's extra steps (the checkpoint interval without budgets).
    """
    return StageRun(
        name,
        "sfpp.train",
        [
            f"experiment={experiment}",
            f"task_name={name}",
            f"ckpt_path={source}",
            f"seed={seed}",
            f"trainer.max_steps={stop}",
            f"trainer.val_check_interval={validate_every}",
            *_checkpoint_interval(extra_steps, budgets),
            f"callbacks.video_samples.every_n_steps={stop}",
            *extra,
        ],
        root / "checkpoints" / name / "last.ckpt",
        ignored_warnings=(RESUMED_WITH_OTHER_CALLBACKS,),
    )


def continuation_stages(
    root: Path,
    base_step: int,
    extra_steps: int,
    train_seeds: Sequence[int],
    grpo_steps: int,
    scaling_budgets: Sequence[int] = (),
) -> tuple[list[StageRun], list[StudyModel]]:
    """The continuations of the baseline and GRPO, with the students they leave.

    Args:
        root: Repository root.
        base_step: The baseline checkpoint's step; every continuation resumes it and stops at
            ``base_step + extra_steps``.
        extra_steps: Optimisation steps of every continuation.
        train_seeds: Training seeds of the continuations (``seed``, which sets ``stage.student.seed``).
        grpo_steps: GRPO steps after the Self-Forcing++ continuation of the first seed (0: none).
        scaling_budgets: Budgets of the compute-scaling curve (:func:`scaling_stages`): the first
            seed's continuations then keep a checkpoint at every budget up to ``extra_steps``
            (saving a checkpoint changes nothing in the trajectory).
    """
    checkpoints = root / "checkpoints"
    base_ckpt = checkpoints / BASE_STAGE / "last.ckpt"
    stop = base_step + extra_steps
    stages: list[StageRun] = []
    models = [StudyModel("Self-Forcing (baseline)", "Self-Forcing (baseline)", base_ckpt, None)]
    for seed in train_seeds:
        budgets = scaling_budgets if seed == train_seeds[0] else ()
        for key, (method, experiment, extra) in CONTINUED_METHODS.items():
            name = f"study_{key}_seed{seed}"
            stages.append(
                _continuation(
                    root, name, experiment, base_ckpt, seed, stop, extra_steps, budgets, extra, extra_steps
                )
            )
            models.append(StudyModel(f"{method}, training seed {seed}", method, stages[-1].done_file, seed))
    if grpo_steps > 0:
        source = checkpoints / f"study_sfpp_seed{train_seeds[0]}" / "last.ckpt"
        name = "study_sfpp_grpo"
        stages.append(
            StageRun(
                name,
                "sfpp.train",
                [
                    "experiment=toy_grpo",
                    f"task_name={name}",
                    f"student_ckpt={source}",
                    f"trainer.max_steps={grpo_steps}",
                    f"trainer.val_check_interval={grpo_steps}",
                    f"callbacks.video_samples.every_n_steps={grpo_steps}",
                    f"callbacks.model_checkpoint.every_n_train_steps={grpo_steps}",
                ],
                checkpoints / name / "last.ckpt",
            )
        )
        label = f"Self-Forcing++ + GRPO, training seed {train_seeds[0]}"
        models.append(StudyModel(label, "Self-Forcing++ + GRPO", stages[-1].done_file, train_seeds[0]))
    return stages, models


def ablation_stages(
    root: Path, base_step: int, extra_steps: int, seed: int, keys: Sequence[str]
) -> tuple[list[StageRun], list[StudyModel], dict[str, tuple[int, int]]]:
    """The stages of the ablations ``keys`` (of :data:`ABLATIONS`) for one training seed.

    Args:
        root: Repository root.
        base_step: The baseline checkpoint's step.
        extra_steps: Optimisation steps of the continuations (an ablation trains a multiple of it).
        seed: Training seed.
        keys: Ablations to train.

    Returns:
        The stages, the students they leave, and ``{name: (first step, optimisation steps)}``.

    Raises:
        ValueError: For an unknown ablation.
    """
    unknown = [key for key in keys if key not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; choose from {sorted(ABLATIONS)}")
    checkpoints = root / "checkpoints"
    base_ckpt = checkpoints / BASE_STAGE / "last.ckpt"
    stages, models, steps = [], [], {}
    for key in keys:
        ablation = ABLATIONS[key]
        name = f"study_ablation_{key}_seed{seed}"
        start = 0 if ablation.from_init else base_step
        stop = base_step + ablation.step_factor * extra_steps
        resume = [] if ablation.from_init else [f"ckpt_path={base_ckpt}"]
        stages.append(
            StageRun(
                name,
                "sfpp.train",
                [
                    f"experiment={ablation.experiment}",
                    f"task_name={name}",
                    *resume,
                    f"seed={seed}",
                    f"trainer.max_steps={stop}",
                    f"trainer.val_check_interval={stop - start}",
                    f"callbacks.model_checkpoint.every_n_train_steps={stop - start}",
                    f"callbacks.video_samples.every_n_steps={stop}",
                    *ablation.overrides,
                ],
                checkpoints / name / "last.ckpt",
                ignored_warnings=() if ablation.from_init else (RESUMED_WITH_OTHER_CALLBACKS,),
            )
        )
        steps[name] = (start, stop - start)
        models.append(
            StudyModel(f"{ablation.label}, training seed {seed}", ablation.label, stages[-1].done_file, seed)
        )
    return stages, models, steps


@dataclass(frozen=True)
class ScalingPoint:
    """One point of the compute-scaling curve: a method after a number of extra optimisation steps.

    Attributes:
        method: :data:`SF_CONTINUED` or :data:`SFPP_CONTINUED` (``Self-Forcing (baseline)`` at 0 steps).
        budget: Extra optimisation steps after the baseline.
        checkpoint: The checkpoint written at that step.
        stage: The stage that wrote it (its record and log give the CPU minutes).
    """

    method: str
    budget: int
    checkpoint: Path
    stage: str


def budget_checkpoint(root: Path, stage: str, step: int) -> Path:
    """The checkpoint a stage kept at a global step (``callbacks.model_checkpoint.filename``)."""
    return root / "checkpoints" / stage / f"step_{step:08d}.ckpt"


def scaling_stages(
    root: Path, base_step: int, extra_steps: int, seed: int, budgets: Sequence[int]
) -> list[StageRun]:
    """The continuations of the first seed carried on past ``extra_steps`` up to the largest budget.

    Each resumes its method's continuation (``study_<key>_seed<seed>``, which stops at
    ``base_step + extra_steps``) and trains on to ``base_step + max(budgets)``, keeping a checkpoint
    at every budget: the same trajectory as one run of ``max(budgets)`` steps, since a run resumes
    exactly. Nothing to do when no budget exceeds ``extra_steps``.

    Raises:
        ValueError: For a budget that is not positive.
    """
    if any(b <= 0 for b in budgets):
        raise ValueError(f"scaling budgets must be positive, got {list(budgets)}")
    if not budgets or max(budgets) <= extra_steps:
        return []
    checkpoints = root / "checkpoints"
    stop = base_step + max(budgets)
    stages = []
    for key, (_, experiment, extra) in CONTINUED_METHODS.items():
        source = checkpoints / f"study_{key}_seed{seed}" / "last.ckpt"
        name = f"study_{key}_seed{seed}_scaling"
        validate = max(budgets) - extra_steps
        stages.append(
            _continuation(root, name, experiment, source, seed, stop, validate, budgets, extra, extra_steps)
        )
    return stages


def scaling_points(
    root: Path, base_step: int, extra_steps: int, seed: int, budgets: Sequence[int]
) -> list[ScalingPoint]:
    """Every point of the curve: the baseline at 0 steps, then each method at each budget (sorted)."""
    points = [
        ScalingPoint(
            "Self-Forcing (baseline)", 0, root / "checkpoints" / BASE_STAGE / "last.ckpt", BASE_STAGE
        )
    ]
    for key, (method, _, _) in CONTINUED_METHODS.items():
        for budget in sorted(set(budgets)):
            stage = f"study_{key}_seed{seed}" + ("" if budget <= extra_steps else "_scaling")
            points.append(
                ScalingPoint(method, budget, budget_checkpoint(root, stage, base_step + budget), stage)
            )
    return points
