"""Benchmark: the toy teacher's training step eager or compiled, in float32 or under CPU bf16 autocast.

On a CPU with AMX bf16 units a ``(1024, 256) @ (256, 256)`` product takes about a quarter of the
float32 time in bf16, a ``(256, 256)`` one about half. But at the toy teacher's size the products
are a minority of a step: casts, elementwise work and the per-operator cost of eager PyTorch make
up the rest, so bf16 alone buys little, while ``torch.compile`` fuses the elementwise work and
removes most of the per-operator cost. On a CPU without native bf16 (no AVX512-BF16, no AMX) bf16
products are emulated at about a hundredth of the float32 speed: there the teacher's config trains
in float32 (``sfpp_precision``) and this script times the two float32 ways only.

The script times one toy-teacher step (``experiment=toy_teacher``'s model, x0 loss, the world's
text encoder, fused AdamW) on the teacher's two kinds of batch, 16 single frames and 8 clips of
8 frames, four ways: eager or ``torch.compile(model, dynamic=False)`` (``stage.compile_model``),
each in float32 or under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what
``trainer.precision=bf16-mixed`` does; the model keeps attention and its output head in float32).
Every round times one step of each of the eight copies (identical starting weights, the same
batches and noise), the order rotating from round to round; the time is the median over rounds.
The compile time (the first three steps of a compiled copy) is printed apart.

Run: ``.venv/bin/python tests/benchmarks/bench_teacher_speed.py`` (``--quick`` for a short run;
about 4 minutes in all, most of it compiling).

Check (exit code 2 if it fails): on the first step, from identical weights and inputs, every
copy's loss is within 2% of the eager float32 copy's (the four ways compute the same function).
Targets (exit code 1 if one fails): the way the teacher's config trains on this CPU (compiled +
bf16 where bf16 is native, compiled float32 elsewhere) takes at most 0.75x the eager float32 step
on image batches and at most 0.7x on video batches.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import torch
from bench_teacher_step import Copy, batches, start_run
from results_json import BenchReport

from sfpp.models import build_model
from sfpp.utils.precision import bf16_is_native
from sfpp.world import WorldTextEncoder

TARGETS = {"16 images": 0.75, "8 x 8 frames": 0.7}
KINDS = {"16 images": (1, 16), "8 x 8 frames": (8, 8)}  # name: (frames per clip, clips per batch)
NATIVE_BF16 = bf16_is_native("cpu")
WAYS = tuple(
    way
    for way in (
        ("eager", False, False),
        ("eager bf16", False, True),
        ("compiled", True, False),
        ("compiled bf16", True, True),
    )
    if NATIVE_BF16 or not way[2]  # emulated bf16 would take hours and is never used
)
#: The way ``experiment=toy_teacher`` trains on this CPU, which the targets are about.
CONFIGURED = "compiled bf16" if NATIVE_BF16 else "compiled"


def measure(kind: str, rounds: int, warmup: int = 3) -> dict[str, tuple[float, float, float]]:
    """``{way: (median seconds per step, first-step loss, compile seconds)}`` on one batch kind."""
    frames, clips = KINDS[kind]
    data = batches(frames, clips, 4)
    torch.manual_seed(0)
    model = build_model("toy", prediction_type="x0", attention_backend="sdpa")
    text = WorldTextEncoder(64)
    copies, first_loss, compile_seconds = {}, {}, {}
    for name, compiled, bf16 in WAYS:
        copy = Copy(model, text, "fused")
        if compiled:
            copy.model = torch.compile(copy.model, dynamic=False)
        began = time.perf_counter()
        for index in range(warmup):
            torch.manual_seed(index)
            copy.step(data[index % 4], seed=index, bf16=bf16)
            if index == 0:
                first_loss[name] = copy.loss
        compile_seconds[name] = time.perf_counter() - began
        copies[name] = copy
    times: dict[str, list[float]] = {name: [] for name, _, _ in WAYS}
    gc.disable()
    try:
        for index in range(warmup, warmup + rounds):
            order = WAYS[index % len(WAYS) :] + WAYS[: index % len(WAYS)]  # rotate who goes first
            for name, _, bf16 in order:
                torch.manual_seed(index)  # the same noise levels for every copy
                seconds, _ = copies[name].step(data[index % 4], seed=index, bf16=bf16)
                times[name].append(seconds)
    finally:
        gc.enable()
    return {
        name: (statistics.median(times[name]), first_loss[name], compile_seconds[name]) for name, _, _ in WAYS
    }


def main(argv: list[str] | None = None) -> int:
    """Time every way on both batch kinds, print the table, the check and the targets; return the exit code."""
    rounds, args = start_run(argv, __doc__.splitlines()[0], rounds=30, quick_rounds=8)
    report = BenchReport(
        "bench_teacher_speed.py",
        "The toy teacher step, eager or compiled, float32 or bf16",
        "Four copies of the toy teacher (x0 loss, the world's text encoder, fused AdamW) from the same "
        "weights per batch kind, eager or torch.compile(dynamic=False), each in float32 or under CPU "
        f"bf16 autocast (bf16 {'native' if NATIVE_BF16 else 'emulated on this CPU: float32 ways only'}); "
        f"interleaved with the order rotating, median of {rounds} rounds. The first 3 "
        "steps (compilation included) are timed apart; PyTorch's compile cache shortens them on a "
        "machine that compiled the graphs before.",
        threads=args.threads,
    )
    results = {kind: measure(kind, rounds) for kind in KINDS}
    for kind, result in results.items():
        reference = result["eager"][1]
        for name, (_, loss, _) in result.items():
            if abs(loss / reference - 1.0) > 0.02:
                print(f"CHECK FAILED ({kind}): {name} first loss {loss:.5f} vs eager float32 {reference:.5f}")
                return 2
    print("check: every way's first loss is within 2% of the eager float32 one's")
    print(f"\n{'batch':<15}{'way':<15}{'ms/step':>9}{'/ eager':>9}{'first 3 steps, s':>18}")
    for kind, result in results.items():
        base = result["eager"][0]
        for name, (seconds, _, compile_seconds) in result.items():
            print(f"{kind:<15}{name:<15}{1000 * seconds:>9.1f}{seconds / base:>9.3f}{compile_seconds:>18.1f}")
    failed = False
    print()
    report.table(
        "Milliseconds per step",
        ["batch", "way", "ms/step", "/ eager float32", "first 3 steps, s"],
        [
            [
                kind,
                name if name != "eager" else "eager float32",
                1000 * seconds,
                seconds / result["eager"][0],
                first,
            ]
            for kind, result in results.items()
            for name, (seconds, _, first) in result.items()
        ],
    )
    report.check(True, "every way's first loss is within 2% of the eager float32 one's")
    for kind, target in TARGETS.items():
        ratio = results[kind][CONFIGURED][0] / results[kind]["eager"][0]
        passed = ratio <= target
        failed |= not passed
        way = CONFIGURED if NATIVE_BF16 else "compiled float32"
        text = f"{way} (the teacher's config on this CPU) / eager float32 on {kind} = {ratio:.3f} <= {target}"
        print(f"{'PASS' if passed else 'FAIL'}: {text}")
        report.check(passed, text)
    report.write(args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
