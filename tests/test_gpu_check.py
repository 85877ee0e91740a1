"""The GPU check's CPU rehearsal: the same script with tiny shapes, the same JSON layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sfpp.apps.gpu_check import SHAPES, main, parse_pytest_counts, run_gpu_tests, table

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
        # timed once the cache is full (a 9-frame window of chunks of 3: two chunks first), and
        # counted in video frames: 4 per latent frame, 12 per chunk, with or without the decode
        assert stream["chunks_before_timing"] == 2
        assert abs(stream["frames_per_second"] * stream["seconds_per_chunk"] - 12) < 1e-6
    assert report["versions"]["torch"] == torch.__version__ and "pytest" in report["versions"]
    assert list(report).index("stream_decode") < list(report).index("dmd")  # DMD, the largest, last
    assert report["stream_decode"]["decode"] and not report["stream"]["decode"]
    assert not torch.distributed.is_initialized()  # the one-process group of the DMD part is gone
    printed = capsys.readouterr().out
    assert "stream FPS (with VAE decode)" in printed and "ratio to matmul peak" in printed
    assert printed.startswith("versions: python ")


def test_a_run_cut_short_keeps_the_parts_it_measured(tmp_path: Path, monkeypatch) -> None:
    import sfpp.apps.gpu_check as gpu_check

    def killed(*args, **kwargs):
        raise SystemExit("the device's time limit")

    monkeypatch.setattr(gpu_check, "dmd_updates", killed)
    monkeypatch.setattr(gpu_check, "stream_speed", lambda *a, **k: {"frames_per_second": 1.0})
    out = tmp_path / "gpu_check.json"
    with pytest.raises(SystemExit):
        main(["--rehearsal", "--skip-tests", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["matmul"]["ok"] and report["stream_decode"]["frames_per_second"] == 1.0
    assert "dmd" not in report


def _fake_root(tmp_path: Path, gpu_test: str) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir(parents=True)
    (tests / "test_on_gpu.py").write_text(
        f"import pytest\n\n\n@pytest.mark.gpu\ndef test_it():\n    {gpu_test}\n"
    )
    (tests / "test_other.py").write_text("import a_package_the_gpu_image_lacks\n")
    return tmp_path


def test_gpu_tests_run_only_their_modules_and_fail_when_pytest_does(tmp_path: Path) -> None:
    passing = _fake_root(tmp_path / "a", "assert True")
    result = run_gpu_tests(passing)
    assert result["files"] == ["tests/test_on_gpu.py"] and result["passed"] == 1 and result["errors"] == 0
    failing = _fake_root(tmp_path / "b", "assert False")
    with pytest.raises(RuntimeError, match="exited with 1: 0 passed, 1 failed"):
        run_gpu_tests(failing)
    empty = tmp_path / "c"
    (empty / "tests").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no test module"):
        run_gpu_tests(empty)
    # a failed part fails the run: its error is in the table and the exit code
    assert "failed: RuntimeError: pytest exited" in table(
        {
            "mode": "full",
            "device": "x",
            "torch": "2",
            "gpu_tests": {"ok": False, "error": "RuntimeError: pytest exited with 2"},
        }
    )


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


@pytest.mark.slow
def test_the_rehearsal_runs_with_only_the_gpu_images_packages_and_the_wheels(tmp_path: Path) -> None:
    """make gpu-rehearsal: a venv of the image's packages, the carried wheels unpacked, the check on the CPU."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        ["make", "--no-print-directory", "gpu-rehearsal", f"GPU_REHEARSAL_DIR={tmp_path}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "unpacked" in output and "versions: python" in output
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(report[section]["ok"] for section in SECTIONS), report
    assert report["gpu_tests"]["errors"] == 0 and report["gpu_tests"]["skipped"] > 0
    assert report["versions"]["diffusers"] == "0.42.1" and report["versions"]["pytest"] != "missing"


def test_a_failed_dmd_part_keeps_the_updates_it_timed(monkeypatch) -> None:
    import lightning as L

    import sfpp.apps.gpu_check as gpu_check

    fit = L.Trainer.fit

    def out_of_memory_at_step_3(self, *args, **kwargs):
        class Stop(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if batch_idx == 3:
                    raise RuntimeError("CUDA out of memory (simulated)")

        self.callbacks.append(Stop())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", out_of_memory_at_step_3)
    with pytest.raises(
        RuntimeError, match=r"out of memory \(simulated\) \(after 3 timed updates, \(step, seconds\): \[\(0, "
    ):
        gpu_check.dmd_updates(SHAPES["rehearsal"], torch.device("cpu"))
    assert not torch.distributed.is_initialized()


def test_the_5b_rehearsal_runs_every_part_at_wan2_2_shapes(tmp_path: Path) -> None:
    """``--model 5b``: 48-channel latents, the Wan2.2 VAE kind (2x2 patching, residual blocks)."""
    out = tmp_path / "gpu_check_5b.json"
    assert main(["--rehearsal", "--skip-tests", "--model", "5b", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "5b" and report["shape_set"] == "rehearsal_5b"
    for section in SECTIONS[1:]:
        assert report[section]["ok"], report[section]
    assert report["shapes"]["vae"]["is_residual"] and report["shapes"]["model_overrides"]["in_channels"] == 48
    assert report["stream_decode"]["frames_per_second"] > 0
