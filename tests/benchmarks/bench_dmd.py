"""Benchmark: one extended-DMD step at rollout lengths N = K, 5K and 20K, side by side.

A DMD generator step rolls the student out to the end of its window (no gradients before the
window, the graph of one denoising step per window chunk inside it), re-noises the window and
backpropagates the DMD loss; a critic step does the same rollout without any graph. With a rolling
KV cache the memory of a step should not depend on N, and its time should grow with the frames
actually generated, not faster. The window is placed at the END of the rollout ("last"), the worst
case, so each step generates all N frames.

Run: ``.venv/bin/python tests/benchmarks/bench_dmd.py`` (``--quick`` for a short run). Prints
seconds per step, seconds per generated frame and peak transient tensor memory (torch profiler
allocator events) for each N, checks the targets and exits non-zero if one fails:

* peak memory flat in N: max / min <= 1.10;
* time per generated frame at 20K / at K <= 1.15 (time grows no faster than the frames generated).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import peak_transient_bytes  # noqa: E402
from results_json import BenchReport  # noqa: E402

from sfpp.codecs import PixelCodec  # noqa: E402
from sfpp.diffusion.rollout import FewStepSampler  # noqa: E402
from sfpp.models import build_model  # noqa: E402
from sfpp.stages.dmd import DMDModule  # noqa: E402
from sfpp.world.text import WorldTextEncoder  # noqa: E402

WINDOW = 8  # the toy teacher's horizon, in latent frames
CHUNK = 2
PROMPTS = ["a red circle bouncing on a dark background", "a blue square bouncing on a dark background"]


def build(rollout_frames: int) -> DMDModule:
    """A toy-sized DMD module (random weights: speed and memory do not depend on them)."""
    torch.manual_seed(0)
    teacher = build_model("toy", prediction_type="x0", attention_backend="sdpa")
    generator = build_model(
        "toy", causal=True, num_frames_per_chunk=CHUNK, prediction_type="x0", attention_backend="sdpa"
    )
    generator.load_state_dict(teacher.state_dict())
    return DMDModule(
        generator=generator,
        teacher=teacher,
        text_encoder=WorldTextEncoder(64),
        codec=PixelCodec(),
        sampler=FewStepSampler.from_steps([1000, 750, 500, 250], shift=3.0),
        generator_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5, betas=(0.0, 0.999)),
        critic_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5, betas=(0.0, 0.999)),
        rollout_frames=rollout_frames,
        window_frames=WINDOW,
        student={"latent_shape": (3, 16, 16), "cache_window_frames": WINDOW - CHUNK},
        window_mode="last",
        real_guidance_scale=2.0,
    )


def generator_step(module: DMDModule, step: int) -> None:
    """The work of one generator update, without the optimiser (identical for every N)."""
    from sfpp.diffusion.losses import dmd_loss, real_and_fake_x0

    context, null_context = module._contexts(PROMPTS)
    rng = module._rng(step)
    window, _ = module._rollout_window(context, rng, keep_graph=True)
    x_t, _, timestep, sigma = module.reinjector(window.detach(), rng)
    real_x0, fake_x0 = real_and_fake_x0(
        module.teacher, module.critic, x_t, timestep, sigma, context, null_context, 2.0
    )
    loss, _ = dmd_loss(window, real_x0, fake_x0)
    loss.backward()
    module.generator.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; return 1 if a target fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per length (median)")
    parser.add_argument("--quick", action="store_true", help="1 timed step per length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    report = BenchReport(
        "bench_dmd.py",
        "One extended-DMD generator step at rollout lengths N = K, 5K and 20K",
        f"Toy flavour, batch {len(PROMPTS)}, window K = {WINDOW} latent frames at the end of the rollout "
        f"(every one of the N frames is generated), chunks of {CHUNK}; median of {repeats} steps per "
        "length after a warm-up step; peak transient tensor memory from the profiler's allocator events.",
        threads=args.threads,
    )
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    print(
        f"toy flavour, batch {len(PROMPTS)}, window K={WINDOW} latent frames, chunks of {CHUNK}, window at the end"
    )

    rows = []
    for factor in (1, 5, 20):
        frames = WINDOW * factor
        module = build(frames)
        generator_step(module, 0)  # warm-up
        times = []
        for step in range(1, repeats + 1):
            began = time.perf_counter()
            generator_step(module, step)
            times.append(time.perf_counter() - began)
        peak = peak_transient_bytes(lambda m=module: generator_step(m, 99))
        seconds = statistics.median(times)
        rows.append((factor, frames, seconds, seconds / frames, peak))

    print(f"{'N':>6} {'frames':>7} {'s/step':>8} {'s/frame':>8} {'peak MiB':>9}")
    for factor, frames, seconds, per_frame, peak in rows:
        print(f"{str(factor) + 'K':>6} {frames:>7} {seconds:>8.2f} {per_frame:>8.3f} {peak / 2**20:>9.1f}")
    peaks = [r[4] for r in rows]
    memory_ratio = max(peaks) / min(peaks)
    time_ratio = rows[-1][3] / rows[0][3]
    checks = [
        (f"peak memory flat in N: max/min = {memory_ratio:.3f} <= 1.10", memory_ratio <= 1.10),
        (f"time per generated frame 20K/K = {time_ratio:.3f} <= 1.15", time_ratio <= 1.15),
    ]
    for text, ok in checks:
        print(("PASS " if ok else "FAIL ") + text)
        report.check(ok, text)
    report.table(
        "One generator step per rollout length",
        ["N", "frames", "s/step", "s/frame", "peak MiB"],
        [
            [f"{factor}K", frames, seconds, per_frame, peak / 2**20]
            for factor, frames, seconds, per_frame, peak in rows
        ],
    )
    report.note(
        "The teacher, critic and backward work is per window; the rollout before the window runs without "
        "gradients through the rolling KV cache, so memory stays flat in N and time per generated frame falls."
    )
    report.write(args.json)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
