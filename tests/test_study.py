"""make study's driver: its stages, its JSON layout, its report, on toy-shaped stand-in checkpoints."""

import json

import pytest
import torch

from sfpp.apps.study import (
    ABLATIONS,
    BASE_STAGE,
    HORIZONS,
    MAKE_ABLATIONS,
    DMDSchedule,
    StudyModel,
    ablation_stages,
    continuation_stages,
    evaluate_study,
    shared_stages,
)
from sfpp.apps.study_metrics import FD_PARTS, METRICS, STABILITY_PARTS, shift_metric
from sfpp.apps.study_report import (
    REAL_LABEL,
    SF_CONTINUED,
    SFPP_CONTINUED,
    TEACHER_LABEL,
    check_target,
    group_results,
)
from sfpp.metrics import FEATURE_NAMES
from sfpp.models import build_model
from sfpp.world import WorldTextEncoder


def _stand_ins(tmp_path):
    torch.manual_seed(0)
    teacher_ckpt = tmp_path / "teacher.ckpt"
    text = WorldTextEncoder(embed_dim=64)
    teacher = build_model("toy", prediction_type="x0")
    state = {f"text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state}, teacher_ckpt)
    models = []
    for method, seed in ((SF_CONTINUED, 1), (SFPP_CONTINUED, 1), (SFPP_CONTINUED, 2)):
        student = build_model("toy", causal=True, num_frames_per_chunk=2, prediction_type="x0")
        path = tmp_path / f"{len(models)}.ckpt"
        torch.save({"state_dict": {f"ema.module.{k}": v for k, v in student.state_dict().items()}}, path)
        models.append(StudyModel(f"{method}, training seed {seed}", method, path, seed))
    return teacher_ckpt, models


def test_study_results_layout_table_plot_frames_and_videos(tmp_path):
    teacher_ckpt, models = _stand_ins(tmp_path)
    horizons = (1, 3)
    out = tmp_path / "study"
    protocol = {
        "base_step": 850,
        "extra_steps": 10,
        "extra_generator_updates": 2,
        "train_seeds": [1, 2],
        "horizon_frames": 8,
        "sfpp_rollout_frames": 160,
    }
    results = evaluate_study(
        out, teacher_ckpt, models, protocol, eval_seeds=(0, 1), num_prompts=2, horizons=horizons
    )
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert {
        "measured",
        "commit",
        "command",
        "machine",
        "protocol",
        "training",
        "models",
        "scores",
        "methods",
        "target",
    } <= set(results)
    scores = results["scores"]
    assert list(scores) == [REAL_LABEL, TEACHER_LABEL] + [m.label for m in models]
    assert list(scores[TEACHER_LABEL]) == ["1"]  # the teacher only makes clips of its horizon
    assert set(STABILITY_PARTS) <= set(scores[TEACHER_LABEL]["1"])  # what lowers its stability
    for label in [REAL_LABEL] + [m.label for m in models]:
        assert list(scores[label]) == ["1", "3"]
        assert set(scores[label]["3"]) == set(METRICS) | set(FD_PARTS) | set(STABILITY_PARTS)
        assert "stability_prefix" not in scores[label]["1"]
        assert all(len(values) == 2 for values in scores[label]["3"].values())  # one value per eval seed
        # the distance's two terms sum to it; the squared shifts sum to the mean term
        window = scores[label]["3"]
        for seed in range(2):
            assert window["fd_mean_term"][seed] + window["fd_cov_term"][seed] == pytest.approx(
                window["quality_fd"][seed], rel=1e-5, abs=1e-4
            )
            squares = sum(window[shift_metric(f)][seed] ** 2 for f in FEATURE_NAMES)
            assert squares == pytest.approx(window["fd_mean_term"][seed], rel=1e-9)
    real = scores[REAL_LABEL]
    assert all(v > 90 for h in ("1", "3") for v in real[h]["stability"])
    assert real["3"]["motion_gap"] == [0.0, 0.0]  # real videos are their own motion reference
    # Real videos are the floor of the distance to real clips; a random student is far above it.
    assert max(real["3"]["quality_fd"]) < min(scores[models[0].label]["3"]["quality_fd"])
    # the two Self-Forcing++ students are one method with a spread over training seeds
    sfpp = results["methods"][SFPP_CONTINUED]
    assert sfpp["members"] == [models[1].label, models[2].label]
    assert sfpp["horizons"]["3"]["quality_fd"]["train_spread"] > 0
    assert results["methods"][SF_CONTINUED]["horizons"]["3"]["quality_fd"]["train_spread"] == 0
    table = (out / "table.md").read_text()
    # a row per metric, one in the table of the distance's two terms, one in the stability at 1x
    assert table.count(f"| {SFPP_CONTINUED} |") == len(METRICS) + 2 and "| model | 1x | 3x |" in table
    assert "## What lowers stability at 1x" in table and "The teacher's clips lose most on" in table
    # the pictures: chosen by rule at the horizon of the largest gap, their numbers on the page
    pictures = results["pictures"]
    assert pictures["horizon"] == 3 and set(pictures["cases"]) == {"median", "largest"}
    largest = pictures["cases"]["largest"]
    assert largest["difference"] >= pictures["cases"]["median"]["difference"]
    assert set(largest["numbers"]) == {SF_CONTINUED, SFPP_CONTINUED, "real video"}
    assert "## How the pictures were chosen" in table and f"evaluation seed {largest['seed']}" in table
    assert "sfpp_no_worse_at_1x" in table
    assert (out / "quality_vs_horizon.png").stat().st_size > 10_000
    assert (out / "frames.png").stat().st_size > 5_000
    assert (out / "side_by_side.gif").stat().st_size > 1_000
    assert len(list(out.glob("side_by_side_seed*.mp4"))) == 2
    # the results pages render from this layout
    from sfpp.apps.results_pages import readme_table, study_page, teacher_page_from_study

    page = study_page(results)
    assert "## FD to real (lower is better)" in page and f"| {SFPP_CONTINUED} |" in page
    assert "## What the distance is made of" in page and "| luma_median |" in page
    assert "| the teacher's clips |" in teacher_page_from_study(results)
    demo = {
        "frames": 160,
        "measured": "x",
        "commit": "y",
        "command": "z",
        "models": {},
        "total_minutes": 22.4,
        "stages": [{"name": "teacher", "minutes": 13.62}, {"name": "ode_init", "minutes": 2.06}],
    }
    table = readme_table(results, demo)
    assert f"| {SFPP_CONTINUED} |" in table
    assert "`make demo` took 22 min (stages: teacher 13.6, ode_init 2.1 min; measured x" in table


def _fake(fd_by_method):
    """Results whose only metric values are the given FDs (one student per training seed)."""
    scores, methods = {}, {}
    for method, by_seed in fd_by_method.items():
        for seed, by_horizon in by_seed.items():
            label = f"{method} {seed}"
            methods[label] = method
            scores[label] = {
                str(h): {"quality_fd": [fd], "clean_frames": [0.5], "shape_accuracy": [0.5]}
                for h, fd in by_horizon.items()
            }
    return {"methods": group_results(scores, methods)}


def test_target_checks_use_the_training_seed_spread():
    teacher = {0: {1: 10.0}}
    good = _fake(
        {
            SF_CONTINUED: {1: {1: 12.0, 20: 30.0, 50: 40.0}, 2: {1: 12.2, 20: 31.0, 50: 41.0}},
            SFPP_CONTINUED: {1: {1: 12.0, 20: 12.5, 50: 14.0}, 2: {1: 12.4, 20: 12.9, 50: 15.0}},
            TEACHER_LABEL: teacher,
        }
    )
    checks = check_target(good)
    assert all(c["passed"] for c in checks.values()), checks
    # a margin inside twice the spread is no win
    noisy = _fake(
        {
            SF_CONTINUED: {1: {1: 12.0, 20: 20.0, 50: 20.0}, 2: {1: 12.0, 20: 30.0, 50: 30.0}},
            SFPP_CONTINUED: {1: {1: 12.0, 20: 13.0, 50: 14.0}, 2: {1: 12.0, 20: 24.0, 50: 25.0}},
            TEACHER_LABEL: teacher,
        }
    )
    checks = check_target(noisy)
    assert (
        not checks["sfpp_beats_sf_at_20x"]["passed"]
        and not checks["sfpp_fd_20x_within_10pct_of_1x"]["passed"]
    )
    one_seed = _fake(
        {
            SF_CONTINUED: {1: {1: 12.0, 20: 30.0, 50: 40.0}},
            SFPP_CONTINUED: {1: {1: 12.0, 20: 12.5, 50: 14.0}},
            TEACHER_LABEL: teacher,
        }
    )
    checks = check_target(one_seed)
    assert not checks["sfpp_beats_sf_at_50x"]["passed"] and not checks["sfpp_no_worse_at_1x"]["passed"]
    assert "one training seed" in checks["sfpp_beats_sf_at_20x"]["detail"]
    assert checks["sfpp_fd_20x_within_10pct_of_1x"]["passed"]  # needs no spread
    far = _fake({SFPP_CONTINUED: {1: {1: 16.0}}, TEACHER_LABEL: teacher})
    assert not check_target(far)[f"{SFPP_CONTINUED}: distils the teacher at 1x"]["passed"]


def test_the_study_page_says_where_a_missed_target_loses_its_distance():
    from sfpp.apps.study_analysis import where_quality_goes

    fd = {1: 8.0, 5: 11.0, 20: 12.0}
    missed = _fake({SFPP_CONTINUED: {1: fd}, SF_CONTINUED: {1: {1: 8.0, 5: 9.0, 20: 16.0}}})
    missed["protocol"] = {"horizons": [1, 5, 20]}
    missed["target"] = check_target(missed)
    lines = "\n".join(where_quality_goes(missed))
    assert "8.0 (1x) -> 11.0 (5x) -> 12.0 (20x); 75% of the rise to 20x is reached by 5x" in lines
    assert "12% of the rise" in lines  # Self-Forcing's rise comes late
    assert "clean frames 0.50 -> 0.50" in lines and "does not fall from 1x to 20x" in lines
    met = _fake({SFPP_CONTINUED: {1: {1: 8.0, 5: 8.2, 20: 8.4}}})
    met["protocol"] = {"horizons": [1, 5, 20]}
    met["target"] = check_target(met)
    assert where_quality_goes(met) == []


def test_study_defaults_and_stages():
    assert HORIZONS == (1, 5, 10, 20, 50)
    names = [s.name for s in shared_stages()]
    assert names == ["teacher", "ode_pairs", "ode_init", BASE_STAGE]
    stages, models = continuation_stages(__import__("pathlib").Path("."), 1350, 500, (1, 2), 60)
    assert [s.name for s in stages] == [
        "study_sf_seed1",
        "study_sfpp_seed1",
        "study_sf_seed2",
        "study_sfpp_seed2",
        "study_sfpp_grpo",
    ]
    for stage in stages[:4]:
        assert any(o.endswith(f"checkpoints/{BASE_STAGE}/last.ckpt") for o in stage.overrides)
        assert "trainer.max_steps=1850" in stage.overrides  # the same extra steps for both methods
    assert (
        "stage.rollout_frames=160" in stages[1].overrides
        and "stage.critic_windows_per_rollout=4" in stages[1].overrides
    )
    assert not any("rollout_frames" in o for o in stages[0].overrides)  # toy_self_forcing: N = K
    assert any(o.endswith("checkpoints/study_sfpp_seed1/last.ckpt") for o in stages[-1].overrides)
    assert [m.train_seed for m in models] == [None, 1, 1, 2, 2, 1]
    # toy DMD schedule: 100 warm-up critic steps, then every fifth step a generator update
    assert DMDSchedule(0, 4, 100).generator_updates(100) == 0
    assert DMDSchedule(100, 4, 100).generator_updates(5) == 1
    assert DMDSchedule(1350, 4, 100).generator_updates(500) == 100


def test_ablations_vary_one_setting_of_a_continuation():
    root = __import__("pathlib").Path(".")
    stages, models, steps = ablation_stages(root, 2000, 500, 1, list(ABLATIONS))
    by_key = dict(zip(ABLATIONS, stages, strict=True))
    control_sf, control_sfpp = continuation_stages(root, 2000, 500, (1,), 0)[0]

    def differences(stage, control):
        skip = ("task_name=", "trainer.", "callbacks.")
        return {o for o in stage.overrides if not o.startswith(skip)} ^ {
            o for o in control.overrides if not o.startswith(skip)
        }

    # budget: Self-Forcing continued with 3x the steps, nothing else changed
    assert differences(by_key["budget"], control_sf) == set()
    assert "trainer.max_steps=3500" in by_key["budget"].overrides
    assert steps["study_ablation_budget_seed1"] == (2000, 1500)
    # rollout length and window sampling: one setting of the Self-Forcing++ continuation each
    assert differences(by_key["rollout_length"], control_sfpp) == {
        "stage.rollout_frames=40",
        "stage.rollout_frames=160",
    }
    assert differences(by_key["window_sampling"], control_sfpp) == {"stage.window_mode=last"}
    # initialisation: no baseline checkpoint, as many steps as the baseline and a continuation
    assert differences(by_key["init"], control_sfpp) == {f"ckpt_path=checkpoints/{BASE_STAGE}/last.ckpt"}
    assert "trainer.max_steps=2500" in by_key["init"].overrides and steps[by_key["init"].name] == (0, 2500)
    assert [m.method for m in models] == [a.label for a in ABLATIONS.values()]
    assert all(m.train_seed == 1 for m in models)
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_stages(root, 2000, 500, 1, ["bigger_model"])


def _ablation_protocol(key, horizons):
    """The protocol of a one-seed run with the ablation ``key``, two evaluation seeds."""
    return {
        "base_step": 2000,
        "train_seeds": [1],
        "extra_steps": 500,
        "extra_generator_updates": 100,
        "prompts": 16,
        "eval_seeds": [0, 1],
        "horizons": horizons,
        "ablations": {ABLATIONS[key].label: ABLATIONS[key].hypothesis},
    }


def test_the_ablations_page_lists_every_row_and_hypothesis():
    from sfpp.apps.results_pages import ablations_page

    scores = {
        label: {str(h): {m: [float(h), float(h) + 1] for m in METRICS} for h in (1, 20)}
        for label in (SF_CONTINUED, ABLATIONS["budget"].label)
    }
    # the Self-Forcing++ continuation is 0.5 and 1.5 below the others on the two evaluation seeds
    scores[SFPP_CONTINUED] = {str(h): {m: [h - 0.5, h - 0.5] for m in METRICS} for h in (1, 20)}
    data = {
        "measured": "2026-12-02",
        "commit": "abc1234",
        "command": "python -m sfpp.apps.study --ablations budget",
        "minutes": 12.0,
        "protocol": _ablation_protocol("budget", [1, 20]),
        "training": {
            "study_ablation_budget_seed1": {
                "minutes": 10.0,
                "steps": 1500,
                "generator_updates": 300,
                "steps_per_minute": 150.0,
            }
        },
        "models": {label: {"method": label, "train_seed": 1} for label in scores},
        "scores": scores,
        "methods": group_results(scores, {}),
    }
    page = ablations_page(data)
    assert "## FD to real: each row minus Self-Forcing++ (continued), paired over evaluation seeds" in page
    assert f"| {ABLATIONS['budget'].label} | +1.0 ± 0.5 | +1.0 ± 0.5 |" in page
    assert ABLATIONS["budget"].hypothesis in page and "commit `abc1234`" in page
    assert f"| {ABLATIONS['budget'].label} | 1.5 ± 0.5 | 20.5 ± 0.5 |" in page
    assert "| study_ablation_budget_seed1 | 10.0 | 1500 | 300 | 150.0 |" in page


def _with_parts(shift_by_method):
    """Scores of two evaluation seeds whose only drifting feature is ``luma_median``, by ``{method: {h: shift}}``."""
    scores, methods = {}, {}
    for method, by_horizon in shift_by_method.items():
        label = method if method == REAL_LABEL else f"{method}, training seed 1"
        methods[label] = method
        scores[label] = {}
        for h, shift in by_horizon.items():
            cells = {shift_metric(f): [0.1, -0.1] for f in FEATURE_NAMES}
            cells[shift_metric("luma_median")] = [shift - 0.5, shift + 0.5]
            mean_term = [sum(v[seed] ** 2 for v in cells.values()) for seed in range(2)]
            cells |= {"fd_mean_term": mean_term, "fd_cov_term": [2.0, 2.0]}
            cells["quality_fd"] = [m + 2.0 for m in mean_term]
            scores[label][str(h)] = cells
    return {
        "protocol": {"horizons": [1, 5, 20]},
        "models": {label: {"method": m, "train_seed": 1} for label, m in methods.items()},
        "scores": scores,
        "methods": group_results(scores, methods),
    }


def test_the_pages_say_what_the_distance_is_made_of(tmp_path):
    from sfpp.apps.results_pages import ablations_page, render_all
    from sfpp.apps.study_analysis import distance_parts

    data = _with_parts({REAL_LABEL: {1: 0.0, 5: 0.0, 20: 0.0}, SFPP_CONTINUED: {1: 0.0, 5: -1.0, 20: -2.0}})
    # real videos score real; the student's background darkens by 2 real standard deviations by 20x
    lines = "\n".join(distance_parts(data))
    assert "| model | 1x | 20x |" in lines  # 5x is not a shown horizon
    # mean term at 1x: 13 features at 0.01 and luma_median at 0.25, per seed; 20x adds 4 to it
    assert f"| {SFPP_CONTINUED} | 0.4 + 2.0 | 4.4 + 2.0 |" in lines
    assert (
        "| luma_median | +0.00 | +0.00 | -2.00 |" in lines and "| hue_red | +0.00 | +0.00 | +0.00 |" in lines
    )
    assert (
        f"**{SFPP_CONTINUED}**: from 1x to 20x the distance changes by +4.0: +4.0 in the mean term and "
        "+0.0 in the covariance term" in lines
    )
    assert (
        "grew most (shift at 1x -> 20x, change of its square): luma_median (+0.00 -> -2.00, +4.00)" in lines
    )
    assert (
        distance_parts(_fake({SFPP_CONTINUED: {1: {1: 8.0, 20: 9.0}}}) | {"protocol": {"horizons": [1, 20]}})
        == []
    )

    # an ablation run of another set publishes as a page of its own, with its own pictures
    data |= {
        "measured": "2026-12-03",
        "commit": "abc1234",
        "command": "python -m sfpp.apps.study --ablations init",
        "minutes": 100.0,
        "training": {},
    }
    data["protocol"] = _ablation_protocol("init", data["protocol"]["horizons"])
    page = ablations_page(data, "study_ablations_init")
    assert page.startswith(
        "<!-- generated by python -m sfpp.apps.results_pages from docs/results/study_ablations_init.json"
    )
    assert "# Ablations of the study: Initialisation" in page
    noted = ablations_page(data | {"notes": ["It shared the CPU."]}, "study_ablations_init")
    assert "min on the 2-core CPU. It shared the CPU." in noted and "It shared" not in page
    assert (
        "(study_ablations_init_quality_vs_horizon.png)" in page and "## What the distance is made of" in page
    )
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    (tmp_path / "README.md").write_text("no results block")
    (results / "study_ablations_init.json").write_text(json.dumps(data))
    assert render_all(tmp_path) == {results / "study_ablations_init.md": page}


def test_the_schedule_is_read_from_the_baseline_checkpoint(tmp_path):
    path = tmp_path / "base.ckpt"
    hparams = {"critic_updates_per_generator": 2, "critic_warmup_steps": 10}
    torch.save({"global_step": 40, "hyper_parameters": hparams, "state_dict": {}}, path)
    schedule = DMDSchedule.from_checkpoint(path)
    assert schedule == DMDSchedule(40, 2, 10) and schedule.generator_updates(9) == 3


def test_study_command_line_rejects_bad_prompts(capsys):
    from sfpp.apps.study import main

    with pytest.raises(SystemExit):
        main(["--prompts", "0"])
    assert "--prompts must be in 1..64" in capsys.readouterr().err


def test_publish_only_needs_a_finished_study(tmp_path, capsys):
    from sfpp.apps.study import main

    with pytest.raises(SystemExit):
        main(["--publish-only", "--out", str(tmp_path)])
    assert "no results.json in" in capsys.readouterr().err
    from sfpp.apps.study import published_name

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"protocol": {"ablations": {}}}))
    assert published_name(results) == "study"

    def with_ablations(*keys):
        ablations = {ABLATIONS[key].label: ABLATIONS[key].hypothesis for key in keys}
        results.write_text(json.dumps({"protocol": {"ablations": ablations}}))
        return published_name(results)

    assert with_ablations(*reversed(MAKE_ABLATIONS)) == "study_ablations"  # make study-ablations' set
    assert with_ablations("init") == "study_ablations_init"  # another set does not replace its page
    assert with_ablations("window_sampling", "budget") == "study_ablations_budget_window_sampling"
    results.write_text(json.dumps({"protocol": {"ablations": {"no such row": "hypothesis"}}}))
    with pytest.raises(ValueError, match="not in ABLATIONS"):
        published_name(results)


def test_make_study_ablations_runs_the_ablations_that_publish_as_study_ablations():
    from pathlib import Path

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nstudy-ablations:", 1)[1].split("\n\n", 1)[0]
    assert f"--ablations {' '.join(MAKE_ABLATIONS)} " in recipe


def test_a_rerun_that_reuses_every_stage_counts_their_minutes(tmp_path, monkeypatch):
    import sfpp.apps.study as study
    from sfpp.apps.pipeline import StageTiming

    out = tmp_path / "study"
    out.mkdir()
    protocols = []
    monkeypatch.setattr(
        study, "DMDSchedule", type("S", (), {"from_checkpoint": lambda path: DMDSchedule(40, 2, 0)})
    )
    monkeypatch.setattr(
        study, "evaluate_study", lambda out, teacher, models, protocol, *a: protocols.append(protocol)
    )

    def run(minutes):
        def run_stages(stages, force=(), cwd=None):
            reused = minutes is None
            return [StageTiming(s.name, reused, 0.0 if reused else minutes * 60) for s in stages]

        monkeypatch.setattr(study, "run_stages", run_stages)
        study.run_study(out, train_seeds=(1,), grpo_steps=0, root=tmp_path)

    run(2.0)  # every stage trains, 2 min each
    run(None)  # every stage is reused
    assert protocols[0]["training_minutes"] == pytest.approx(protocols[1]["training_minutes"])
    stages = len(json.loads((out / "training.json").read_text()))
    assert stages >= 6 and protocols[1]["training_minutes"] == pytest.approx(2.0 * stages)
