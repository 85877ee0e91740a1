"""``make gpu-check``: the CUDA path at Wan2.1-1.3B scale, measured in one prepared run.

``python -m sfpp.apps.gpu_check --out artifacts/gpu_check.json`` on a CUDA machine (the JSON is
rewritten after every part):

1. runs the ``gpu``-marked tests (flex block masks and their backward, SDPA on CUDA, FlashAttention
   if importable, bf16 autocast against float32);
2. times a few extended-DMD updates of a Wan2.1-1.3B-shaped student, critic and teacher (random
   weights: speed and memory do not depend on their values) under FSDP2 on one GPU
   (``ModelParallelStrategy``) with bf16 mixed precision and activation checkpointing: seconds per
   critic and per generator update, peak memory;
3. streams a 1.3B-shaped causal model (chunks of 3 latent frames, a 21-frame window, 4 steps,
   480x832 video = 60x104 latents) through its rolling KV cache for ``--chunks`` chunks after a
   warm-up, with and without the Wan VAE decode (random weights, real shapes): frames per second,
   first-chunk latency, peak memory, and the model's FLOP/s against a bf16 matrix product timed
   in the same run;
4. writes everything to one JSON and prints a table.

``--model 5b`` runs parts 2 and 3 at Wan2.2-TI2V-5B's shapes instead (48-channel latents of 44x80
at 1280x704, a 30-frame window, the Wan2.2 VAE): ``make gpu-check GPU_CHECK_ARGS="--model 5b"``.

``--rehearsal`` runs the same code with tiny shapes on the CPU (``make gpu-check-cpu``, and a test),
so the script stays working on machines without a GPU; its JSON has the same layout.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from sfpp.apps.gpu_shapes import MODELS, SHAPES, CheckShapes, shapes_for
from sfpp.apps.gpu_speed import _peak_gib, _reset_peak, _sync, matmul_tflops, stream_speed

__all__ = ["SHAPES", "CheckShapes", "main", "parse_pytest_counts", "run_check", "table"]


class RandomText(nn.Module):
    """A stand-in text encoder: seeded random embeddings ``(B, text_len, dim)`` per prompt."""

    def __init__(self, dim: int, text_len: int) -> None:
        super().__init__()
        self.dim, self.text_len = dim, text_len

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and an all-ones mask for ``prompts``."""
        generator = torch.Generator().manual_seed(len(prompts))
        embeddings = torch.randn(len(prompts), self.text_len, self.dim, generator=generator)
        return embeddings, torch.ones(len(prompts), self.text_len, dtype=torch.bool)


# -- 1. the gpu-marked tests ------------------------------------------------------------------------


def parse_pytest_counts(output: str) -> dict[str, int]:
    """Outcome counts of pytest's closing line (``3 passed, 1 skipped, 2 deselected in 4.1s``)."""
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "deselected"), 0)
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line)
        if found and " in " in line:
            for number, kind in found:
                counts["errors" if kind.startswith("error") else kind] = int(number)
            break
    return counts


def gpu_test_files(root: Path) -> list[str]:
    """The test modules that hold ``gpu``-marked tests (relative to ``root``).

    Only these are handed to pytest: the other modules import packages a GPU image may lack (video
    writers, the web server), and one collection error stops the whole run.
    """
    return sorted(
        str(path.relative_to(root))
        for path in (root / "tests").glob("test_*.py")
        if "pytest.mark.gpu" in path.read_text(encoding="utf-8")
    )


def run_gpu_tests(root: Path, timeout: float = 240.0, require_passed: bool = True) -> dict[str, Any]:
    """Run the ``gpu``-marked tests and count the outcomes from pytest's closing line.

    Args:
        root: The repository root.
        timeout: Seconds before the run is stopped.
        require_passed: Fail when no test passed (on a GPU); without one (the CPU rehearsal) every
            gpu test skips, and a run that collected and skipped them passes.

    Raises:
        RuntimeError: If pytest is not installed, no module holds gpu tests, or the run did not
            pass: a non-zero exit (failures, collection errors, a timeout), nothing passed (with
            ``require_passed``) or nothing ran at all.
    """
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError(
            "pytest is not installed in this Python: carry it in .gpu-wheels (make gpu-wheels)"
        )
    files = gpu_test_files(root)
    if not files:
        raise RuntimeError(f"no test module under {root / 'tests'} holds a gpu-marked test")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "gpu",
        "-rs",
        "-o",
        "addopts=",
        *files,
    ]
    began = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as error:
        output, code = f"timed out after {timeout:.0f} s: {error}", -1
    counts = parse_pytest_counts(output)
    tail = "\n".join(output.splitlines()[-15:])
    ran = counts["passed"] + (0 if require_passed else counts["skipped"])
    if code != 0 or ran == 0:
        raise RuntimeError(
            f"pytest exited with {code}: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['errors']} errors, {counts['skipped']} skipped; last lines:\n{tail}"
        )
    return {
        "returncode": code,
        "seconds": time.perf_counter() - began,
        "files": files,
        **counts,
        "tail": tail,
    }


# -- 2. DMD updates under FSDP2 ----------------------------------------------------------------------


def dmd_updates(shapes: CheckShapes, device: torch.device) -> dict[str, Any]:
    """Time ``dmd_updates`` extended-DMD updates (alternating critic and generator) after one warm-up."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from sfpp.diffusion.rollout import FewStepSampler
    from sfpp.models import build_model
    from sfpp.stages.dmd import DMDModule, update_kind
    from sfpp.stages.student import StudentSettings

    overrides = dict(shapes.model_overrides)
    if shapes.dmd_layers is not None:
        overrides["num_layers"] = shapes.dmd_layers
    torch.manual_seed(0)
    teacher = build_model(shapes.flavour, **overrides)
    generator = build_model(
        shapes.flavour, causal=True, num_frames_per_chunk=shapes.chunk_frames, **overrides
    )
    generator.load_state_dict(teacher.state_dict())
    channels = teacher.config.in_channels
    cuda = device.type == "cuda"
    module = DMDModule(
        generator=generator,
        teacher=teacher,
        text_encoder=RandomText(teacher.config.text_dim, shapes.text_len),
        codec=_LatentCodec(channels),
        sampler=FewStepSampler.from_steps(list(shapes.steps), shift=5.0),
        generator_optimizer=lambda params: torch.optim.AdamW(params, lr=2e-6, betas=(0.0, 0.999)),
        critic_optimizer=lambda params: torch.optim.AdamW(params, lr=4e-7, betas=(0.0, 0.999)),
        rollout_frames=shapes.window_frames,
        window_frames=shapes.window_frames,
        student=StudentSettings(
            latent_shape=(channels, shapes.latent_height, shapes.latent_width),
            cache_window_frames=shapes.window_frames - shapes.chunk_frames,
            mixed_precision=cuda,
            activation_checkpointing=True,
        ),
        critic_updates_per_generator=1,
    )
    timer = _StepTimer(device)
    trainer = L.Trainer(
        max_steps=1 + shapes.dmd_updates,
        accelerator="cuda" if cuda else "cpu",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    _reset_peak(device)
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        trainer.fit(module, datamodule=_PromptData(batch_size=1))
    except Exception as error:  # keep what was measured before the failure (e.g. out of memory)
        done = [(int(step), round(seconds, 3)) for step, seconds in timer.seconds]
        raise RuntimeError(
            f"{type(error).__name__}: {error} (after {len(done)} timed updates, (step, seconds): {done}; "
            f"peak memory {_peak_gib(device):.1f} GiB)"
        ) from error
    finally:  # the strategy's one-process group must not outlive the check (later work would sync over it)
        if not was_initialized and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    kinds: dict[str, list[float]] = {}
    for step, seconds in timer.seconds[1:]:  # the first update compiles and allocates
        kinds.setdefault(update_kind(step, 1, 0), []).append(seconds)
    parameters = sum(p.numel() for p in teacher.parameters())
    return {
        "layers": teacher.config.num_layers,
        "parameters_per_network": parameters,
        "window_frames": shapes.window_frames,
        "tokens_per_window": shapes.window_frames
        * teacher.tokens_per_frame(shapes.latent_height, shapes.latent_width),
        "mixed_precision": "bf16" if cuda else "float32",
        "fsdp2": True,
        "activation_checkpointing": True,
        "seconds_per_update": {kind: sum(v) / len(v) for kind, v in kinds.items()},
        "peak_memory_gib": _peak_gib(device),
    }


class _LatentCodec:
    """Latents as they are: the DMD updates never decode (no validation here)."""

    temporal_stride = 1
    spatial_stride = 1

    def __init__(self, channels: int) -> None:
        self.latent_channels = channels

    def to(self, device: Any) -> _LatentCodec:
        return self


class _PromptData(L.LightningDataModule):
    """Placeholder prompts (the stand-in text encoder ignores their words)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"prompt": f"prompt {i}"} for i in range(64)], batch_size=self.batch_size)


class _StepTimer(L.Callback):
    """Seconds of every training step, synchronised with the device."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._began = device, [], 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        self.seconds.append((batch_idx, time.perf_counter() - self._began))


# -- the run -----------------------------------------------------------------------------------------


def _save_vae(shapes: CheckShapes, directory: Path, dtype: torch.dtype) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    z = shapes.vae["z_dim"]  # per-channel latent statistics: random weights need no real ones
    vae = AutoencoderKLWan(**shapes.vae, latents_mean=[0.0] * z, latents_std=[1.0] * z)
    vae.save_pretrained(directory)
    return directory


def _section(name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part of the check; a failure is recorded with its error, and the run goes on."""
    began = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        result = {"ok": True, **work()}
    except Exception as error:  # reported in the JSON and the table; the other parts still run
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    # A section's networks (a trainer and its module refer to each other) go before the next one
    # starts, so that its peak memory is its own.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result["section_seconds"] = time.perf_counter() - began
    return result


def _write(report: dict[str, Any], out: Path | None) -> None:
    """Write the report so far (after every section: a run cut short keeps what it measured)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    partial.replace(out)


def run_check(
    rehearsal: bool, root: Path, skip_tests: bool = False, out: Path | None = None, model: str = "1.3b"
) -> dict[str, Any]:
    """Run every part; return the JSON's content, written to ``out`` after every section.

    ``model`` picks the shapes: ``1.3b`` (Wan2.1-T2V-1.3B) or ``5b`` (Wan2.2-TI2V-5B).
    """
    shape_name, shapes = shapes_for(model, rehearsal)
    device = torch.device("cpu" if rehearsal or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    report: dict[str, Any] = {
        "mode": "rehearsal" if rehearsal else "full",
        "model": model,
        "shape_set": shape_name,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "commit": _commit(root),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "python": platform.python_version(),
        "shapes": asdict(shapes),
    }
    report["versions"] = package_versions()
    print(
        "versions: " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        flush=True,
    )
    _write(report, out)
    if not rehearsal and device.type != "cuda":
        report["error"] = "no CUDA device: run with --rehearsal on a CPU"
        _write(report, out)
        return report
    report["gpu_tests"] = (
        {"skipped_by_request": True}
        if skip_tests
        else _section("gpu tests", lambda: run_gpu_tests(root, require_passed=device.type == "cuda"))
    )
    _write(report, out)
    report["matmul"] = _section(
        "bf16 matrix product",
        lambda: {
            "size": shapes.matmul_size,
            "dtype": str(dtype).replace("torch.", ""),
            "tflops": matmul_tflops(device, shapes.matmul_size, dtype, min_seconds=0.2 if rehearsal else 2.0),
        },
    )
    _write(report, out)
    # The streaming sections run before the DMD updates, whose four networks need the most memory.
    with tempfile.TemporaryDirectory() as workdir:
        vae_dir = Path(workdir) / "vae"
        report["stream"] = _section("streaming, no decode", lambda: stream_speed(shapes, device, dtype, None))
        _write(report, out)
        report["stream_decode"] = _section(
            "streaming with the Wan VAE decode",
            lambda: stream_speed(shapes, device, dtype, _save_vae(shapes, vae_dir, dtype)),
        )
        _write(report, out)
    report["dmd"] = _section(
        "DMD updates (FSDP2, activation checkpointing)", lambda: dmd_updates(shapes, device)
    )
    peak = report["matmul"].get("tflops")
    for key in ("stream", "stream_decode"):
        if report[key].get("ok") and peak:
            report[key]["ratio_to_matmul_peak"] = report[key]["model_tflops_per_second"] / peak
    _write(report, out)
    return report


#: What the check imports, by distribution name; their versions open the report.
CHECKED_PACKAGES = (
    "torch",
    "lightning",
    "diffusers",
    "transformers",
    "peft",
    "einops",
    "safetensors",
    "pytest",
    "triton",
    "flash-attn",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages the check imports (``"missing"`` for those not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in CHECKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _commit(root: Path) -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""

    def value(section: str, key: str, fmt: str = "{:.3g}") -> str:
        part = report.get(section, {})
        if not part.get("ok", False):
            return f"failed: {part.get('error', 'not run')}"[:90]
        item = part.get(key)
        return "-" if item is None else fmt.format(item) if isinstance(item, float | int) else str(item)

    dmd = report.get("dmd", {})
    per_update = dmd.get("seconds_per_update", {}) if dmd.get("ok") else {}
    tests = report.get("gpu_tests", {})
    rows = [
        ("mode", report["mode"]),
        ("device", f"{report['device']}, torch {report['torch']}"),
        (
            "gpu tests",
            "skipped by request"
            if tests.get("skipped_by_request")
            else f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, {tests.get('skipped', 0)} skipped"
            if tests.get("ok")
            else f"failed: {tests.get('error')}",
        ),
        ("matmul TFLOP/s", value("matmul", "tflops")),
        ("DMD layers", value("dmd", "layers")),
        (
            "DMD s / critic update",
            "{:.3g}".format(per_update["critic"]) if "critic" in per_update else value("dmd", "x"),
        ),
        (
            "DMD s / generator update",
            "{:.3g}".format(per_update["generator"]) if "generator" in per_update else value("dmd", "x"),
        ),
        ("DMD peak memory GiB", value("dmd", "peak_memory_gib")),
        ("stream FPS (no decode)", value("stream", "frames_per_second")),
        ("stream FPS (with VAE decode)", value("stream_decode", "frames_per_second")),
        ("first-chunk latency s (decode)", value("stream_decode", "first_chunk_latency_s")),
        ("stream peak memory GiB (decode)", value("stream_decode", "peak_memory_gib")),
        ("model TFLOP/s (no decode)", value("stream", "model_tflops_per_second")),
        ("ratio to matmul peak", value("stream", "ratio_to_matmul_peak")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in rows)


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m sfpp.apps.gpu_check``; exit 1 when a part failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--rehearsal", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts/gpu_check.json"), help="the JSON to write"
    )
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="1.3b",
        help="the shapes: 1.3b (Wan2.1-T2V-1.3B, the default) or 5b (Wan2.2-TI2V-5B)",
    )
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[3]
    report = run_check(args.rehearsal, root, args.skip_tests, out=args.out, model=args.model)
    print(table(report))
    print(f"written: {args.out}")
    failed = [k for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False]
    tests_failed = report.get("gpu_tests", {}).get("failed", 0) or report.get("gpu_tests", {}).get(
        "errors", 0
    )
    return 1 if failed or tests_failed or "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
