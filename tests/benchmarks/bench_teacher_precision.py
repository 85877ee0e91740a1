"""Benchmark: the toy teacher's training step in float32 and under CPU bf16 autocast, side by side.

This CPU has AMX bf16 units: a ``(1024, 256) @ (256, 256)`` product takes about a quarter of the
float32 time in bf16, but a ``(256, 256)`` one only about half, and the casts and the elementwise
work around the products do not shrink at all. So what bf16 buys depends on how many tokens a
step carries. This script measures one toy-teacher step (``experiment=toy_teacher``'s model, x0
loss, the world's text encoder, fused AdamW) per frame, for image batches of 16 and 64 single
frames and for video batches of 8 clips of 8 frames, each in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (what ``trainer.precision=bf16-mixed`` does; the
model keeps attention and its output head in float32, ``sfpp.models``).

Every round times one step of each of the six copies (identical starting weights, same batches and
noise), the order rotating from round to round; the time is the median over rounds.

Run: ``.venv/bin/python tests/benchmarks/bench_teacher_precision.py`` (``--quick`` for a short run).

Check (exit code 2 if it fails): on the first step, from identical weights and inputs, each bf16
copy's loss is within 2% of its float32 twin's (the bf16 path computes the same function).
Target (exit code 1 if it fails): per frame, a bf16 step on 64 images costs at most 0.7x a float32
step on 16 images (the image phase of ``experiment=toy_teacher`` before and after
``trainer.precision=bf16-mixed data.image_batch_size=64``).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys

import torch
from bench_teacher_step import Copy, batches

from sfpp.models import build_model
from sfpp.text.world import WorldTextEncoder

TARGET = 0.7
#: (name, frames per clip, clips per batch, bf16)
CASES = (
    ("16 images, float32", 1, 16, False),
    ("16 images, bf16", 1, 16, True),
    ("64 images, float32", 1, 64, False),
    ("64 images, bf16", 1, 64, True),
    ("8 x 8 frames, float32", 8, 8, False),
    ("8 x 8 frames, bf16", 8, 8, True),
)


def main(argv: list[str] | None = None) -> int:
    """Time every case, print the table, the check and the target; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 timed rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = 8 if args.quick else args.rounds
    warmup = 2
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} intra-op threads"
    )
    torch.manual_seed(0)
    model = build_model("toy", prediction_type="x0", attention_backend="sdpa")
    text = WorldTextEncoder(64)
    copies = {case: Copy(model, text, "fused") for case in CASES}
    data = {case: batches(case[1], case[2], 4) for case in CASES}
    times: dict[tuple, list[float]] = {case: [] for case in CASES}
    first_loss: dict[tuple, float] = {}
    gc.disable()
    try:
        for index in range(warmup + rounds):
            order = CASES[index % len(CASES) :] + CASES[: index % len(CASES)]  # rotate who goes first
            for case in order:
                torch.manual_seed(index)  # the same noise levels for the float32 and bf16 twins
                seconds, _ = copies[case].step(data[case][index % 4], seed=index, bf16=case[3])
                if index == 0:
                    first_loss[case] = copies[case].loss
                if index >= warmup:
                    times[case].append(seconds)
    finally:
        gc.enable()
    for fp32, bf16 in zip(CASES[0::2], CASES[1::2], strict=True):
        gap = abs(first_loss[bf16] / first_loss[fp32] - 1.0)
        if gap > 0.02:
            print(f"CHECK FAILED: {bf16[0]} loss {first_loss[bf16]:.5f} vs float32 {first_loss[fp32]:.5f}")
            return 2
    print("check: every bf16 copy's first loss is within 2% of its float32 twin's")
    per_frame = {case: statistics.median(times[case]) / (case[1] * case[2]) for case in CASES}
    base = per_frame[CASES[0]]
    print(f"\n{'batch':<24}{'ms/step':>9}{'ms/frame':>10}{'frame cost / 16 images fp32':>30}")
    for case in CASES:
        step = 1000 * statistics.median(times[case])
        print(f"{case[0]:<24}{step:>9.1f}{1000 * per_frame[case]:>10.2f}{per_frame[case] / base:>30.3f}")
    ratio = per_frame[CASES[3]] / base
    passed = ratio <= TARGET
    print(
        f"\n{'PASS' if passed else 'FAIL'}: per-frame cost of 64 images in bf16 / 16 images in "
        f"float32 = {ratio:.3f} <= {TARGET}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
