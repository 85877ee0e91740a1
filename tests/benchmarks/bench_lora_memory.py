"""Benchmark: what LoRA saves at the paper's scale: trainable parameters and optimiser-state bytes.

Builds the generator and the critic at the Wan2.1-T2V-1.3B shape on PyTorch's ``meta`` device (no
memory, no forward), with and without adapters (``stage.lora``: the attention and feed-forward
linears, ranks 16, 64 and 128), and prints per network and in total the trainable parameters, their
float32 gradients and AdamW's two float32 moments, before FSDP2 divides them by the GPU count.

Run: ``.venv/bin/python tests/benchmarks/bench_lora_memory.py`` (seconds). Target: rank 64 cuts the
trainable parameters and the optimiser states of generator + critic by at least 5x; exits 1
otherwise.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_json import BenchReport  # noqa: E402

from sfpp.models import build_model
from sfpp.models.lora import LoraSettings, apply_lora, count_parameters

GIB = 2**30


def _networks(rank: int | None) -> list[tuple[str, torch.nn.Module]]:
    with torch.device("meta"):
        generator = build_model("wan_1_3b", causal=True, num_frames_per_chunk=3)
        critic = build_model("wan_1_3b")
    networks = [("generator", generator), ("critic", critic)]
    if rank is not None:
        for _, network in networks:
            apply_lora(network, LoraSettings(rank=rank, alpha=float(rank)))
    return networks


def main(argv: list[str] | None = None) -> int:
    """Print the table; return 1 if the target fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    report = BenchReport(
        "bench_lora_memory.py",
        "LoRA at the Wan2.1-T2V-1.3B shape: trainable parameters and optimiser states",
        "Generator (causal) and critic built on the meta device at the 1.3B shape, adapters on the "
        "attention and feed-forward linears (alpha = rank); float32 gradients and AdamW's two float32 "
        "moments, per network before FSDP2 divides them by the GPU count.",
        threads=None,
    )
    rows = []
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, meta device")
    print(
        f"{'setting':<14} {'network':<10} {'trainable':>14} {'total':>14} {'grads GiB':>10} {'AdamW GiB':>10}"
    )
    totals: dict[str, int] = {}
    for label, rank in (("full", None), ("LoRA r=16", 16), ("LoRA r=64", 64), ("LoRA r=128", 128)):
        trainable_sum = 0
        for name, network in _networks(rank):
            trainable, total = count_parameters(network)
            trainable_sum += trainable
            print(
                f"{label:<14} {name:<10} {trainable:>14,} {total:>14,} {4 * trainable / GIB:>10.2f} "
                f"{8 * trainable / GIB:>10.2f}"
            )
            rows.append(
                [label, name, f"{trainable:,}", f"{total:,}", 4 * trainable / GIB, 8 * trainable / GIB]
            )
        totals[label] = trainable_sum
    ratio = totals["full"] / totals["LoRA r=64"]
    ok = ratio >= 5.0
    text = f"LoRA r=64 trains {ratio:.1f}x fewer parameters (and optimiser-state bytes) than full fine-tuning (target >= 5x)"
    print(("PASS " if ok else "FAIL ") + text)
    columns = ["setting", "network", "trainable", "total", "gradients GiB", "AdamW GiB"]
    report.table("Per network, before sharding", columns, rows)
    report.check(ok, text)
    report.write(args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
