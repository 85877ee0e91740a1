"""make study's driver on toy-shaped stand-in checkpoints (the stages themselves are tested elsewhere)."""

import json

import torch

from sfpp.apps.pipeline import StageRun
from sfpp.apps.study import HORIZONS, METRICS, REAL_LABEL, TEACHER_LABEL, StudyModel, run_study, study_stages
from sfpp.models import build_model
from sfpp.world import WorldTextEncoder


def test_study_table_plot_and_videos(tmp_path):
    torch.manual_seed(0)
    teacher_ckpt = tmp_path / "teacher.ckpt"
    text = WorldTextEncoder(embed_dim=64)
    teacher = build_model("toy", prediction_type="x0")
    state = {f"text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state}, teacher_ckpt)
    models = []
    for name in ("a", "b"):
        student = build_model("toy", causal=True, num_frames_per_chunk=2, prediction_type="x0")
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {f"ema.module.{k}": v for k, v in student.state_dict().items()}}, path)
        models.append(StudyModel(f"student {name}", path))
    stages = [StageRun("teacher", "sfpp.train", [], teacher_ckpt)]

    horizons = (1, 3)
    results = run_study(
        tmp_path / "study", seeds=(0, 1), num_prompts=2, stages=stages, models=models, horizons=horizons
    )

    out = tmp_path / "study"
    assert list(results) == ["student a", "student b", REAL_LABEL, TEACHER_LABEL]
    assert list(results[TEACHER_LABEL]) == [1]  # the teacher only makes clips of its horizon
    real = results[REAL_LABEL]
    assert all(v > 90 for h in horizons for v in real[h]["visual_stability"])
    # Real videos are the floor of the distance to real clips; a random student is far above it.
    assert max(real[3]["quality_fd"]) < min(results["student a"][3]["quality_fd"])
    for label, by_horizon in results.items():
        if label == TEACHER_LABEL:
            continue
        assert list(by_horizon) == list(horizons)
        assert all(len(by_horizon[h][key]) == 2 for h in horizons for key, _, _ in METRICS)
    table = (out / "table.md").read_text()
    assert table.count("| student a |") == len(horizons) and "3x (24 frames)" in table
    assert table.count(f"| {TEACHER_LABEL} |") == 1 and table.count(f"| {REAL_LABEL} |") == len(horizons)
    assert (out / "quality_vs_horizon.png").stat().st_size > 10_000
    assert len(list(out.glob("side_by_side_seed*.mp4"))) == 2
    assert json.loads((out / "results.json").read_text())["results"]["student b"]["3"]


def test_study_defaults_are_the_papers_horizons():
    assert HORIZONS == (1, 5, 10, 20)


def test_study_trains_three_students_from_one_ode_init():
    stages = study_stages(dmd_steps=100, grpo_steps=10)
    names = [s.name for s in stages]
    assert names == ["teacher", "ode_pairs", "ode_init", "study_sf", "study_sfpp", "study_sfpp_grpo"]
    sf, sfpp, grpo = stages[3:]
    assert "stage.rollout_frames=8" in sf.overrides and "stage.rollout_frames=160" in sfpp.overrides
    assert any(o.endswith("checkpoints/study_sfpp/last.ckpt") for o in grpo.overrides)
