"""The teacher shipped with the package: its provenance, its hash, and make demo's use of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sfpp.world.pretrained as pretrained
from sfpp.apps.pipeline import _plan, run_stages, toy_stages
from sfpp.world.pretrained import install_teacher, provenance, sha256, slim_checkpoint

SHIPPED = pretrained.TEACHER_CHECKPOINT


def test_the_shipped_teacher_is_what_its_provenance_says():
    record = provenance()
    assert sha256(SHIPPED) == record["sha256"]
    for key in ("commit", "command", "machine", "minutes", "measured", "report"):
        assert record[key], key
    assert {"clean_frame_fraction", "detected_fraction", "shape_accuracy"} <= set(record["report"])
    payload = torch.load(SHIPPED, map_location="cpu", weights_only=False)
    prefixes = {key.split(".", 1)[0] for key in payload["state_dict"]}
    assert prefixes == {"ema", "text_encoder"} and payload["global_step"] == record["step"]
    assert "optimizer_states" not in payload


def _fake_teacher_checkpoint(path: Path) -> Path:
    state = {"ema.module.w": torch.ones(2), "text_encoder.e": torch.zeros(3), "model.w": torch.ones(2)}
    torch.save(
        {"state_dict": state, "optimizer_states": [{}], "global_step": 7, "hyper_parameters": {"a": 1}}, path
    )
    return path


def test_a_slim_checkpoint_keeps_what_later_stages_read(tmp_path):
    slim = slim_checkpoint(_fake_teacher_checkpoint(tmp_path / "full.ckpt"), tmp_path / "slim.ckpt")
    payload = torch.load(slim, map_location="cpu", weights_only=False)
    assert sorted(payload["state_dict"]) == ["ema.module.w", "text_encoder.e"] and payload["global_step"] == 7
    torch.save({"state_dict": {"model.w": torch.ones(1)}}, tmp_path / "student.ckpt")
    with pytest.raises(ValueError, match="no 'ema.module.' weights"):
        slim_checkpoint(tmp_path / "student.ckpt", tmp_path / "x.ckpt")


def test_install_checks_the_hash(tmp_path, monkeypatch):
    fake = _fake_teacher_checkpoint(tmp_path / "toy_teacher.ckpt")
    record = tmp_path / "toy_teacher.json"
    record.write_text(json.dumps({"sha256": sha256(fake)}))
    monkeypatch.setattr(pretrained, "TEACHER_CHECKPOINT", fake)
    monkeypatch.setattr(pretrained, "TEACHER_PROVENANCE", record)
    target = install_teacher(tmp_path / "checkpoints" / "toy_teacher" / "last.ckpt")
    assert target.read_bytes() == fake.read_bytes()
    fake.write_bytes(fake.read_bytes() + b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        install_teacher(tmp_path / "again.ckpt")


def test_make_demo_installs_the_shipped_teacher_and_keeps_a_trained_one(tmp_path):
    stage = toy_stages(tmp_path)[0]
    timing = run_stages([stage], cwd=Path.cwd())[0]
    assert not timing.reused and stage.done_file.read_bytes() == SHIPPED.read_bytes()
    assert run_stages([stage], cwd=Path.cwd())[0].reused
    # A teacher the pipeline trained (make demo-full) counts as done for make demo ...
    trained = toy_stages(tmp_path, teacher="train")[0]
    trained.record_file.write_text(
        json.dumps({"overrides": list(trained.overrides), "finished": True, "step": 9200})
    )
    stage.done_file.write_bytes(b"a trained teacher")
    assert (
        run_stages([stage], cwd=Path.cwd())[0].reused and stage.done_file.read_bytes() == b"a trained teacher"
    )
    # ... and make demo-full does not take the shipped one for a trained one: it trains
    run_stages([stage], force=["teacher"], cwd=Path.cwd())
    action, why, _ = _plan(trained, forced=False)
    assert action == "train" and "other settings" in why
