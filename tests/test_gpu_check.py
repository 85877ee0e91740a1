"""The GPU check's CPU rehearsal: the same script with tiny shapes, the same JSON layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sfpp.apps.gpu_check import SHAPES, main, parse_pytest_counts, table

SECTIONS = ("gpu_tests", "matmul", "dmd", "stream", "stream_decode")


def test_the_rehearsal_runs_every_part_and_writes_the_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu_check.json"
    assert main(["--rehearsal", "--skip-tests", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "rehearsal" and set(SECTIONS) <= set(report)
    for section in SECTIONS[1:]:
        assert report[section]["ok"], report[section]
    dmd = report["dmd"]
    assert (
        set(dmd["seconds_per_update"]) == {"critic", "generator"}
        and dmd["fsdp2"]
        and dmd["activation_checkpointing"]
    )
    for key in ("stream", "stream_decode"):
        stream = report[key]
        assert stream["frames_per_second"] > 0 and stream["first_chunk_latency_s"] > 0
        assert stream["ratio_to_matmul_peak"] > 0 and stream["chunks_timed"] >= 10
    assert report["stream_decode"]["decode"] and not report["stream"]["decode"]
    assert not torch.distributed.is_initialized()  # the one-process group of the DMD part is gone
    printed = capsys.readouterr().out
    assert "stream FPS (with VAE decode)" in printed and "ratio to matmul peak" in printed


def test_the_full_shapes_are_wan_1_3b_at_480x832() -> None:
    full = SHAPES["full"]
    assert (full.flavour, full.latent_height * 8, full.latent_width * 8) == ("wan_1_3b", 480, 832)
    assert (full.chunk_frames, full.window_frames, len(full.steps), full.stream_chunks) == (3, 21, 4, 10)


def test_pytest_closing_lines_are_counted() -> None:
    output = "....\n=== 3 passed, 2 skipped, 640 deselected in 4.10s ===\n"
    assert parse_pytest_counts(output) == {
        "passed": 3,
        "failed": 0,
        "skipped": 2,
        "errors": 0,
        "deselected": 640,
    }
    assert parse_pytest_counts("1 failed, 1 error in 2.0s")["errors"] == 1


def test_a_failed_part_shows_in_the_table() -> None:
    report = {
        "mode": "full",
        "device": "x",
        "torch": "2.11",
        "gpu_tests": {"skipped_by_request": True},
        "matmul": {"ok": False, "error": "RuntimeError: CUDA out of memory"},
    }
    assert "failed: RuntimeError: CUDA out of memory" in table(report)
