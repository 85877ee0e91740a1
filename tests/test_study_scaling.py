"""The study's compute-scaling curve, its pictures chosen by rule, and the pages they make."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sfpp.apps.scaling import point_minutes, scaling_findings, scaling_page, summarise_scaling
from sfpp.apps.study_analysis import before_and_after, pictures_section, stability_at_first_horizon
from sfpp.apps.study_metrics import STABILITY_PARTS, stability_part
from sfpp.apps.study_pictures import (
    choose_cases,
    feature_distance,
    gap_horizon,
    write_case_gif,
    write_case_strip,
)
from sfpp.apps.study_report import REAL_LABEL, SF_CONTINUED, SFPP_CONTINUED, TEACHER_LABEL, group_results
from sfpp.apps.study_stages import (
    BASE_STAGE,
    ScalingPoint,
    continuation_stages,
    scaling_points,
    scaling_stages,
)
from sfpp.world import HORIZON, ground_truth, heldout_prompts


def test_scaling_keeps_the_first_seed_at_every_budget_and_carries_it_on():
    root = Path(".")
    stages, _ = continuation_stages(root, 2000, 500, (1, 2), 0, scaling_budgets=(250, 500, 1000))
    by_name = {s.name: s.overrides for s in stages}
    for key in ("sf", "sfpp"):
        assert "callbacks.model_checkpoint.every_n_train_steps=250" in by_name[f"study_{key}_seed1"]
        assert "callbacks.model_checkpoint.save_top_k=-1" in by_name[f"study_{key}_seed1"]
        # the other seed is trained exactly as without the curve
        assert "callbacks.model_checkpoint.every_n_train_steps=500" in by_name[f"study_{key}_seed2"]
        assert not any("save_top_k" in o for o in by_name[f"study_{key}_seed2"])
    carried = scaling_stages(root, 2000, 500, 1, (250, 500, 1000))
    assert [s.name for s in carried] == ["study_sf_seed1_scaling", "study_sfpp_seed1_scaling"]
    for stage, key in zip(carried, ("sf", "sfpp"), strict=True):
        assert f"ckpt_path=checkpoints/study_{key}_seed1/last.ckpt" in stage.overrides
        assert "trainer.max_steps=3000" in stage.overrides
    assert "stage.rollout_frames=160" in carried[1].overrides  # the same method as its continuation
    assert scaling_stages(root, 2000, 500, 1, (250, 500)) == []  # nothing past the study's budget
    with pytest.raises(ValueError, match="positive"):
        scaling_stages(root, 2000, 500, 1, (0, 1000))
    points = scaling_points(root, 2000, 500, 1, (1000, 250, 500))
    assert [(p.method, p.budget) for p in points] == [
        ("Self-Forcing (baseline)", 0),
        (SF_CONTINUED, 250),
        (SF_CONTINUED, 500),
        (SF_CONTINUED, 1000),
        (SFPP_CONTINUED, 250),
        (SFPP_CONTINUED, 500),
        (SFPP_CONTINUED, 1000),
    ]
    assert points[0].checkpoint == root / "checkpoints" / BASE_STAGE / "last.ckpt"
    assert points[2].checkpoint.name == "step_00002500.ckpt" and points[2].stage == "study_sf_seed1"
    assert points[3].checkpoint == root / "checkpoints" / "study_sf_seed1_scaling" / "step_00003000.ckpt"


def test_point_minutes_are_measured_from_the_stage_start(tmp_path):
    def stage(name, seconds, checkpoints):
        folder = tmp_path / "checkpoints" / name
        folder.mkdir(parents=True)
        record = folder / "last.ckpt.stage.json"
        record.write_text(json.dumps({"seconds": seconds}))
        os.utime(record, (10_000, 10_000))  # the stage ended at t = 10000 s
        for step, at in checkpoints.items():
            path = folder / f"step_{step:08d}.ckpt"
            path.write_bytes(b"")
            os.utime(path, (at, at))

    stage("study_sf_seed1", 600.0, {2250: 9_700, 2500: 10_000})  # started at 9400 s
    stage("study_sf_seed1_scaling", 1200.0, {3000: 9_400})  # started at 8800 s
    point = ScalingPoint(
        SF_CONTINUED, 250, tmp_path / "checkpoints/study_sf_seed1/step_00002250.ckpt", "study_sf_seed1"
    )
    assert point_minutes(point, tmp_path) == pytest.approx(5.0)
    carried = ScalingPoint(
        SF_CONTINUED,
        1000,
        tmp_path / "checkpoints/study_sf_seed1_scaling/step_00003000.ckpt",
        "study_sf_seed1_scaling",
    )
    assert point_minutes(carried, tmp_path) == pytest.approx(10.0 + 10.0)  # the continuation's 10 min first
    assert point_minutes(ScalingPoint("Self-Forcing (baseline)", 0, Path("x"), BASE_STAGE), tmp_path) == 0.0


def _point(method, budget, fd1, fd20, minutes=1.0):
    scores = {
        str(h): {"quality_fd": list(fd), "stability": [90.0, 90.0], "clean_frames": [0.7, 0.7]}
        for h, fd in ((1, fd1), (20, fd20))
    }
    return {
        "method": method,
        "budget": budget,
        "minutes": minutes,
        "generator_updates": budget // 5,
        "scores": scores,
    }


def _scaling_data():
    points = [
        _point("Self-Forcing (baseline)", 0, (9.0, 9.2), (14.0, 14.2), 0.0),
        _point(SF_CONTINUED, 250, (9.0, 9.0), (14.0, 14.4), 3.0),
        _point(SF_CONTINUED, 1000, (9.0, 9.0), (13.9, 14.1), 12.0),
        _point(SFPP_CONTINUED, 250, (8.5, 8.7), (12.0, 12.2), 9.0),
        _point(SFPP_CONTINUED, 500, (8.5, 8.5), (10.0, 10.2), 18.0),
        _point(SFPP_CONTINUED, 1000, (8.4, 8.4), (10.0, 10.0), 36.0),
    ]
    protocol = {"base_step": 2000, "train_seed": 1, "budgets": [250, 500, 1000], "prompts": 16}
    protocol |= {"eval_seeds": [0, 1], "horizons": [1, 20]}
    data = {"measured": "2026-12-07", "commit": "abc", "command": "make study", "machine": "a CPU"}
    data |= {"evaluation_minutes": 3.0, "protocol": protocol, "points": points}
    data["summary"] = summarise_scaling(points, [1, 20])
    return data


def test_the_scaling_summary_and_findings_follow_the_numbers(tmp_path):
    data = _scaling_data()
    sfpp = data["summary"][SFPP_CONTINUED]
    assert [e["budget"] for e in sfpp] == [250, 500, 1000]
    assert sfpp[1]["quality_fd@20"] == pytest.approx({"mean": 10.1, "spread": 0.1})
    # the ratio is taken per evaluation seed, then averaged
    assert sfpp[0]["fd_ratio_20x"]["mean"] == pytest.approx((12.0 / 8.5 + 12.2 / 8.7) / 2)
    findings = "\n".join(scaling_findings(data))
    # Self-Forcing++ improves from 0 to 250 and 500, then not by more than the spreads
    assert f"**{SFPP_CONTINUED}**" in findings and "flat from 500 extra steps on" in findings
    assert "it approaches 1" in findings
    # Self-Forcing never improves beyond the spreads: flat from the baseline on
    assert "flat from 0 extra steps on" in findings and "it does not approach 1" in findings
    assert "250 steps +2.1" in findings and "1000 steps +4.0" in findings
    data["notes"] = ["The first stage shared the CPU."]
    page = scaling_page(data)
    assert "min on a CPU. The first stage shared the CPU." in page
    assert page.startswith(
        "<!-- generated by python -m sfpp.apps.results_pages from docs/results/scaling.json"
    )
    assert f"| {SFPP_CONTINUED} | 500 | 100 | 18.0 | 8.5 ± 0.0 | 10.1 ± 0.1 |" in page
    assert "![FD against budget](scaling.png)" in page
    from sfpp.apps.scaling import plot_scaling

    assert plot_scaling(data, Path(tmp_path) / "scaling.png").stat().st_size > 20_000


def test_pictures_are_chosen_by_rule():
    first = {0: np.asarray([5.0, 9.0, 4.0]), 1: np.asarray([6.0, 3.0, 8.0])}
    second = {0: np.asarray([4.0, 2.0, 4.0]), 1: np.asarray([3.0, 3.0, 7.0])}
    # differences: (0,0) 1, (0,1) 7, (0,2) 0, (1,0) 3, (1,1) 0, (1,2) 1 -> median 1, largest 7
    cases = choose_cases(first, second)
    assert cases["largest"] == {"seed": 0, "prompt_index": 1, "difference": 7.0}
    assert cases["median"]["difference"] == 1.0 and cases["median"]["seed"] == 0
    results = {"protocol": {"horizons": [1, 5, 20]}, "methods": {}}
    for method, fds in ((SF_CONTINUED, (8.0, 12.0, 11.0)), (SFPP_CONTINUED, (9.0, 9.0, 10.5))):
        results["methods"][method] = {
            "horizons": {str(h): {"quality_fd": {"mean": v}} for h, v in zip((1, 5, 20), fds, strict=True)}
        }
    assert gap_horizon(results, SF_CONTINUED, SFPP_CONTINUED) == 5  # 1x does not count


def test_feature_distance_and_the_case_pictures(tmp_path):
    real = ground_truth(list(heldout_prompts(2)[:2]), 3 * HORIZON, seed=0)
    darker = (real + 1.0) * 0.5 - 1.0
    assert real.shape[:3] == (2, 3, 3 * HORIZON)
    near, far = feature_distance(real, 2), feature_distance(darker, 2)
    assert near.shape == (2,) and np.all(far > near + 1.0)
    videos = {SF_CONTINUED: darker[0], SFPP_CONTINUED: real[1], "real video": real[0]}
    numbers = {label: {"feature_distance": 1.0, "stability": 99.0} for label in videos}
    cases = [{"title": name, "videos": videos, "numbers": numbers} for name in ("median", "largest")]
    strip = write_case_strip(tmp_path / "frames.png", cases, 3)
    gif = write_case_gif(tmp_path / "cases.gif", cases, 3, horizons_shown=2, upscale=2)
    assert strip.stat().st_size > 5_000
    from PIL import Image

    with Image.open(gif) as image:
        assert image.n_frames == 2 * HORIZON
        assert image.size[1] == 2 * (16 + real.shape[3] * 2 + 30)  # two cases: title, videos, caption


def _with_parts(values):
    return {
        c: {"mean": values.get(c, 100.0)} for c in ("stability", *(stability_part(c) for c in _components()))
    }


def _components():
    return [part.split(":")[1] for part in STABILITY_PARTS]


def test_the_page_says_what_lowers_stability_at_1x_and_keeps_the_earlier_run():
    scores, methods = {}, {}
    for label, jitter in ((REAL_LABEL, 100.0), (TEACHER_LABEL, 70.0), (f"{SF_CONTINUED} 1", 90.0)):
        methods[label] = SF_CONTINUED if label.startswith(SF_CONTINUED) else label
        scores[label] = {"1": {"quality_fd": [8.0], "stability": [jitter]}}
        scores[label]["1"] |= {stability_part(c): [jitter if c == "jitter" else 100.0] for c in _components()}
        scores[label]["1"]["fd_shift:noise_level"] = [(100.0 - jitter) / 10]
    data = {"methods": group_results(scores, methods), "protocol": {"horizons": [1]}}
    lines = "\n".join(stability_at_first_horizon(data))
    assert "| row | stability | jitter |" in lines  # only the components that cost anything
    assert f"| {TEACHER_LABEL} | 70.0 | 70.0 |" in lines
    assert f"lose most on **jitter** (70.0; {SF_CONTINUED} 90.0; real videos 100.0)" in lines
    assert f"the teacher's clips +3.0; {SF_CONTINUED} +1.0. The teacher's frames are the grainiest" in lines
    previous = {
        "measured": "2026-12-02",
        "commit": "old",
        "command": "make study",
        "protocol": {"horizons": [1]},
        "methods": {SF_CONTINUED: {"horizons": {"1": {"quality_fd": {"mean": 9.5}}}}},
        "target": {"x": {"passed": False, "detail": "FD rose"}},
    }
    before = "\n".join(before_and_after(data, previous, "Before the text-path fix"))
    assert f"| {SF_CONTINUED} | 9.5 (-1.5) |" in before and "not met: FD rose" in before
    assert before_and_after(data, None, "x") == [] and pictures_section(data) == []


def test_the_study_is_evaluated_before_the_curve_trains(tmp_path, monkeypatch):
    import sfpp.apps.scaling as scaling
    import sfpp.apps.study as study
    from sfpp.apps.pipeline import StageTiming
    from sfpp.apps.study_stages import DMDSchedule

    calls = []
    monkeypatch.setattr(
        study, "DMDSchedule", type("S", (), {"from_checkpoint": lambda path: DMDSchedule(40, 2, 0)})
    )
    monkeypatch.setattr(study, "evaluate_study", lambda *a, **k: calls.append("evaluate study") or {})
    monkeypatch.setattr(
        scaling, "evaluate_scaling", lambda out, teacher, points, *a, **k: calls.append(points)
    )

    def run_stages(stages, force=(), cwd=None):
        calls.append([s.name for s in stages])
        return [StageTiming(s.name, False, 60.0) for s in stages]

    monkeypatch.setattr(study, "run_stages", run_stages)
    study.run_study(
        tmp_path / "study", train_seeds=(1,), grpo_steps=0, root=tmp_path, scaling_budgets=(250, 1000)
    )
    assert calls[1] == ["study_sf_seed1", "study_sfpp_seed1"] and calls[2] == "evaluate study"
    assert calls[3] == ["study_sf_seed1_scaling", "study_sfpp_seed1_scaling"]
    assert [(p.method, p.budget) for p in calls[4]][-1] == (SFPP_CONTINUED, 1000)
    training = json.loads((tmp_path / "study" / "training.json").read_text())
    assert training["study_sfpp_seed1_scaling"]["steps"] == 500  # carried on from 500 to 1000 extra steps


def test_evaluate_scaling_scores_every_point_and_plots(tmp_path):
    from sfpp.apps.scaling import evaluate_scaling
    from test_study import _stand_ins

    teacher_ckpt, models = _stand_ins(tmp_path)
    root = tmp_path / "repo"
    points = scaling_points(root, 850, 10, 1, (5, 10, 20))
    for point, model in zip(points, [models[0]] * len(points), strict=True):
        point.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        payload = torch.load(model.checkpoint, weights_only=False)
        payload |= {
            "global_step": 850,
            "hyper_parameters": {"critic_updates_per_generator": 4, "critic_warmup_steps": 0},
        }
        torch.save(payload, point.checkpoint)
        record = point.checkpoint.parent / "last.ckpt.stage.json"
        record.write_text(json.dumps({"seconds": 120.0}))
        os.utime(record, (10_000, 10_000))
        os.utime(point.checkpoint, (9_940, 9_940))  # one minute into its stage
    # the study scored the baseline already: the curve takes its numbers instead of generating again
    known = {str(h): {m: [9.0 + h] for m in ("quality_fd", "stability", "clean_frames")} for h in (1, 20)}
    results = evaluate_scaling(
        tmp_path / "scaling",
        teacher_ckpt,
        points,
        {},
        eval_seeds=(0,),
        num_prompts=2,
        horizons=(1, 20),
        root=root,
        known={("Self-Forcing (baseline)", 0): known},
    )
    assert [(p["method"], p["budget"]) for p in results["points"]] == [(p.method, p.budget) for p in points]
    assert results["points"][0]["minutes"] == 0.0 and results["points"][0]["generator_updates"] == 0
    assert results["points"][0]["from_study"] and results["points"][0]["scores"] == known
    assert not results["points"][1]["from_study"]
    assert results["points"][1]["minutes"] == pytest.approx(1.0)  # 60 s into the continuation
    assert results["points"][3]["minutes"] == pytest.approx(
        1.0 + 2.0
    )  # carried on: the continuation's 2 min first
    assert results["points"][2]["generator_updates"] == 2  # 10 steps after 850, every 5th a generator update
    assert results["protocol"]["budgets"] == [5, 10, 20] and results["protocol"]["train_seed"] == 1
    assert set(results["summary"]) == {"Self-Forcing (baseline)", SF_CONTINUED, SFPP_CONTINUED}
    assert "fd_ratio_20x" in results["summary"][SFPP_CONTINUED][0]
    saved = json.loads((tmp_path / "scaling" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert (tmp_path / "scaling" / "scaling.png").stat().st_size > 20_000
    assert "## What the curve says" in scaling_page(saved)
    points[-1].checkpoint.unlink()
    with pytest.raises(FileNotFoundError, match="scaling checkpoints missing"):
        evaluate_scaling(
            tmp_path / "again", teacher_ckpt, points, {}, eval_seeds=(0,), num_prompts=2, root=root
        )
