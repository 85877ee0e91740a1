"""Benchmark: one toy teacher training step with a for-loop, a foreach and a fused AdamW, side by side.

The toy teacher (``experiment=toy_teacher``) takes a few tens of milliseconds a step on this CPU,
and a plain AdamW spends a fifth of it walking ~150 small parameter tensors in Python. The stage
configs ask for ``fused: true`` (one multi-tensor kernel, CPU and CUDA). This script measures what
that buys on the teacher's two kinds of batch: 16 single frames (the image phase) and 8 clips of 8
frames (the video phase).

Three copies of the toy teacher with identical weights, each with its own AdamW (``foreach=False``,
``foreach=True``, ``fused=True``), take steps on the same batches; every round times one step of
each copy in turn, the order rotating, so the machine's drift hits all three alike. The per-step
time is the median over rounds; ``opt`` is the optimiser step alone, ``step`` the forward, backward
and optimiser step.

Run: ``.venv/bin/python tests/benchmarks/bench_teacher_step.py`` (``--quick`` for a short run).

Checks (exit code 2 if one fails, the timings would mean nothing): after the timed steps the three
copies' weights agree to 1e-5 (the three optimisers compute the same update).
Target (exit code 1 if it fails): the fused step takes at most 0.92x the for-loop step on image
batches.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from results_json import BenchReport

from sfpp.codecs import PixelCodec
from sfpp.diffusion.schedule import add_noise, timestep_from_sigma, x0_from_flow
from sfpp.diffusion.training import TrainingSigmas
from sfpp.models import build_model
from sfpp.world import WorldSpec, WorldTextEncoder, WorldVideoDataset, train_prompts

VARIANTS = ("for-loop", "foreach", "fused")
TARGET = 0.92
SIGMAS = TrainingSigmas(shift=1.0, logit_normal=(0.0, 1.0))  # experiment=toy_teacher's noise levels


def optimizer_of(variant: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The toy teacher's AdamW (conf/experiment/toy_teacher.yaml) in one of the three implementations."""
    kinds = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    return torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.99), weight_decay=0.01, **kinds[variant])


def batches(frames: int, batch_size: int, count: int) -> list[dict]:
    """``count`` training batches of the built-in world, ``(B, 3, frames, 16, 16)`` each."""
    dataset = WorldVideoDataset(WorldSpec(), train_prompts(2), frames, batch_size * count, seed=0, stream=0)
    items = [dataset[i] for i in range(batch_size * count)]
    return [
        torch.utils.data.default_collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)
    ]


class Copy:
    """One teacher copy (model and world text encoder) with its own optimiser."""

    def __init__(self, model: torch.nn.Module, text: torch.nn.Module, variant: str) -> None:
        self.model, self.text = copy.deepcopy(model), copy.deepcopy(text)
        params = [*self.model.parameters(), *self.text.parameters()]
        self.optimizer = optimizer_of(variant, params)

    def step(self, batch: dict, seed: int, bf16: bool = False) -> tuple[float, float]:
        """One x0-loss training step; returns (seconds of the whole step, seconds of ``optimizer.step``).

        With ``bf16`` the forward runs under CPU bf16 autocast, as ``trainer.precision=bf16-mixed``
        runs it. The last loss is kept in ``self.loss``.
        """
        generator = torch.Generator().manual_seed(seed)
        began = time.perf_counter()
        x0 = PixelCodec().encode(batch["video"])  # (B, 3, F, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            context, _ = self.text(list(batch["prompt"]))
            sigma = SIGMAS(x0.shape[0])  # the teacher's logit-normal levels
            noise = torch.randn(x0.shape, generator=generator)
            x_t = add_noise(x0, noise, sigma)
            flow = self.model(x_t, timestep_from_sigma(sigma), context)
            loss = (x0_from_flow(flow, x_t, sigma) - x0).square().mean()
        loss.backward()
        self.loss = loss.item()
        optimizer_began = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        return ended - began, ended - optimizer_began


def measure(kind: str, data: list[dict], rounds: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (step, optimiser) seconds per variant over ``rounds`` interleaved rounds."""
    torch.manual_seed(0)
    model = build_model("toy", prediction_type="x0", attention_backend="sdpa")
    text = WorldTextEncoder(64)
    copies = {variant: Copy(model, text, variant) for variant in VARIANTS}
    times: dict[str, list[tuple[float, float]]] = {variant: [] for variant in VARIANTS}
    gc.disable()
    try:
        for index in range(warmup + rounds):
            batch = data[index % len(data)]
            order = VARIANTS[index % 3 :] + VARIANTS[: index % 3]  # rotate who goes first
            for variant in order:
                torch.manual_seed(index)  # the same noise levels for every copy
                result = copies[variant].step(batch, seed=index)
                if index >= warmup:
                    times[variant].append(result)
    finally:
        gc.enable()
    reference = dict(copies["for-loop"].model.named_parameters())
    for variant in VARIANTS[1:]:
        for name, param in copies[variant].model.named_parameters():
            diff = (param - reference[name]).abs().max().item()
            if diff > 1e-5:
                print(f"CHECK FAILED ({kind}): {variant} differs from for-loop in {name} by {diff:.2e}")
                sys.exit(2)
    print(
        f"check ({kind}): the three optimisers give the same weights after {warmup + rounds} steps (<= 1e-5)"
    )
    return {
        variant: (statistics.median(t[0] for t in rows), statistics.median(t[1] for t in rows))
        for variant, rows in times.items()
    }


def start_run(
    argv: list[str] | None, description: str, rounds: int, quick_rounds: int
) -> tuple[int, argparse.Namespace]:
    """Parse ``--rounds/--threads/--quick/--json``, set the threads, print the machine.

    Returns:
        The rounds to time and the parsed arguments.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds per batch kind")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=f"{quick_rounds} rounds per batch kind")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} intra-op threads"
    )
    return (quick_rounds if args.quick else args.rounds), args


def main(argv: list[str] | None = None) -> int:
    """Measure both batch kinds, print the table and the target; return the exit code."""
    rounds, args = start_run(argv, __doc__.splitlines()[0], rounds=60, quick_rounds=12)
    report = BenchReport(
        "bench_teacher_step.py",
        "One toy teacher step with a for-loop, a foreach and a fused AdamW",
        "Three copies of the toy teacher from the same weights, each with its own AdamW, take steps on "
        f"the same batches, interleaved with the order rotating; median of {rounds} rounds after 3 "
        "warm-up steps. opt: the optimiser step alone; step: forward, backward and optimiser step.",
        threads=args.threads,
    )
    kinds: dict[str, Callable[[], list[dict]]] = {
        "image (16 x 1 frame)": lambda: batches(1, 16, 8),
        "video (8 x 8 frames)": lambda: batches(8, 8, 8),
    }
    results = {kind: measure(kind, make(), rounds, warmup=3) for kind, make in kinds.items()}
    print(f"\n{'batch':<22}{'optimiser':<11}{'ms/step':>9}{'ms opt':>9}{'step / for-loop':>17}")
    for kind, result in results.items():
        base = result["for-loop"][0]
        for variant, (step, opt) in result.items():
            print(f"{kind:<22}{variant:<11}{1000 * step:>9.1f}{1000 * opt:>9.1f}{step / base:>17.3f}")
    image = results["image (16 x 1 frame)"]
    ratio = image["fused"][0] / image["for-loop"][0]
    passed = ratio <= TARGET
    text = f"fused step / for-loop step on image batches = {ratio:.3f} <= {TARGET}"
    print(f"\n{'PASS' if passed else 'FAIL'}: {text}")
    report.table(
        "Milliseconds per step",
        ["batch", "AdamW", "ms/step", "ms optimiser", "step / for-loop"],
        [
            [kind, variant, 1000 * step, 1000 * opt, step / result["for-loop"][0]]
            for kind, result in results.items()
            for variant, (step, opt) in result.items()
        ],
    )
    report.check(True, "the three optimisers give the same weights after the timed steps (within 1e-5)")
    report.check(passed, text)
    report.write(args.json)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
