"""make demo's driver, on toy-shaped stand-in checkpoints (the stages themselves are tested elsewhere)."""

import json

import pytest
import torch

from sfpp.apps.demo import DEMO_PROMPTS, publish, run_demo
from sfpp.apps.pipeline import StageRun, toy_stages
from sfpp.models import build_model
from sfpp.world import WorldTextEncoder


def test_demo_reuses_finished_stages_and_writes_videos_curves_and_summary(tmp_path):
    torch.manual_seed(0)
    teacher_ckpt, student_ckpt = tmp_path / "teacher.ckpt", tmp_path / "student.ckpt"
    text = WorldTextEncoder(embed_dim=64)
    torch.save({"state_dict": {f"text_encoder.{k}": v for k, v in text.state_dict().items()}}, teacher_ckpt)
    student = build_model("toy", causal=True, num_frames_per_chunk=2, prediction_type="x0")
    torch.save({"state_dict": {f"ema.module.{k}": v for k, v in student.state_dict().items()}}, student_ckpt)
    stages = [
        StageRun("teacher", "sfpp.train", [], teacher_ckpt),
        StageRun("student", "sfpp.train", [], student_ckpt),
    ]
    for stage in stages:  # both finished: their records say so
        stage.record_file.write_text(json.dumps({"overrides": [], "finished": True, "step": 1}))

    reports = run_demo(tmp_path / "demo", horizons=2, stages=stages)

    out = tmp_path / "demo"
    assert len(list((out / "videos").glob("*.mp4"))) == len(DEMO_PROMPTS)
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "ground_truth.mp4").exists() and (out / "student_side_by_side.mp4").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [s["reused"] for s in summary["stages"]] == [True, True]
    assert summary["frames"] == 16
    # an untrained student is no match for real videos
    real, fake = reports["real videos"].summary, reports["Self-Forcing++ student"].summary
    assert real["world_clean_frame_fraction"] == 1.0 > fake["world_clean_frame_fraction"]
    assert "| real videos |" in (out / "summary.md").read_text()

    root = tmp_path / "repo"
    (root / "docs" / "results").mkdir(parents=True)
    (root / "README.md").write_text("# x\n")
    published = json.loads(publish(out, root, "make demo", note="nothing else ran").read_text())
    assert published["command"] == "make demo" and published["measured"] and "cores" in published["machine"]
    assert published["models"] == summary["models"]
    page = (root / "docs" / "results" / "demo.md").read_text()
    assert f"On {published['machine']}. Nothing else ran." in page


def test_demo_pipeline_chains_the_toy_stages():
    stages = toy_stages(teacher="train")
    assert [s.name for s in stages] == ["teacher", "ode_pairs", "ode_init", "self_forcing_pp"]
    assert str(stages[-1].done_file).endswith("checkpoints/toy_extend/last.ckpt")
    assert all(s.module in ("sfpp.train", "sfpp.ode_pairs") for s in stages)
    assert stages[0].overrides == ["experiment=toy_teacher"]  # the default teacher recipe, not a shorter one
    # make demo installs the shipped teacher instead, and takes a teacher trained here as done
    shipped = toy_stages()
    assert shipped[0].module == "sfpp.world.pretrained" and shipped[0].done_file == stages[0].done_file
    assert list(shipped[0].accepts) == [stages[0].overrides] and shipped[1:] == stages[1:]
    with pytest.raises(ValueError, match="shipped' or 'train'"):
        toy_stages(teacher="download")
