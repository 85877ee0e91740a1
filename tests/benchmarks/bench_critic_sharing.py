"""Benchmark: the critic steps of one Self-Forcing++ cycle, a fresh rollout each vs one shared rollout.

Between two generator updates the generator does not change, so the critic steps of a cycle may
take their windows from one detached rollout (``stage.critic_windows_per_rollout``). This script
times the 4 critic steps of a cycle of the toy Self-Forcing++ settings (N = 20K = 160 latent frames,
uniform windows of K = 8) both ways, side by side in one process, and the generator step beside
them, and reports the cost of a whole cycle (4 critic + 1 generator steps) with and without sharing.

Run: ``.venv/bin/python tests/benchmarks/bench_critic_sharing.py`` (``--cycles 1`` for a short run).
Target: sharing makes a cycle at least 1.5x cheaper; exits non-zero otherwise.
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
from bench_dmd import PROMPTS, WINDOW, build, generator_step  # noqa: E402
from results_json import BenchReport  # noqa: E402

from sfpp.diffusion.losses import flow_matching_loss  # noqa: E402

CRITIC_STEPS = 4
ROLLOUT = 20 * WINDOW


def critic_steps(module, first_step: int, shared: bool) -> None:
    """The rollouts and critic losses (with backward) of the 4 critic steps starting at ``first_step``."""
    context, _ = module._contexts(PROMPTS)
    if shared:
        windows = module._shared_critic_windows(first_step, CRITIC_STEPS, context)
    else:
        windows = [
            module._rollout_window(context, module._rng(first_step + i), keep_graph=False) for i in range(4)
        ]
    for index, (window, _) in enumerate(windows):
        rng = module._rng(10_000 + first_step + index)
        x_t, noise, timestep, _ = module.reinjector(window.detach(), rng)
        flow_matching_loss(module.critic(x_t, timestep, context), window.detach(), noise).backward()
    module.critic.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; return 1 if the target fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3, help="timed cycles per variant (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = BenchReport(
        "bench_critic_sharing.py",
        "Self-Forcing++ critic steps: a fresh rollout each vs one shared rollout",
        f"Toy flavour, batch {len(PROMPTS)}, N = {ROLLOUT} latent frames (20 K), windows of K = {WINDOW} "
        f"drawn uniformly; one cycle is {CRITIC_STEPS} critic steps and 1 generator step, timed "
        f"interleaved in one process, median over {args.cycles} cycles.",
        threads=args.threads,
    )
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    module = build(ROLLOUT)
    module.window_sampler.mode = "uniform"
    critic_steps(module, 0, shared=False)  # warm-up
    fresh, shared, generator = [], [], []
    for cycle in range(args.cycles):  # interleaved, so drifts of the machine hit both alike
        for times, is_shared in ((fresh, False), (shared, True)):
            began = time.perf_counter()
            critic_steps(module, 5 * cycle, shared=is_shared)
            times.append(time.perf_counter() - began)
        began = time.perf_counter()
        generator_step(module, 5 * cycle + 4)
        generator.append(time.perf_counter() - began)
    fresh_s, shared_s, generator_s = (statistics.median(t) for t in (fresh, shared, generator))
    ratio = (fresh_s + generator_s) / (shared_s + generator_s)
    print(
        f"toy flavour, batch {len(PROMPTS)}, N = {ROLLOUT}, K = {WINDOW}, uniform windows, {args.cycles} cycles"
    )
    print(f"4 critic steps, a fresh rollout each: {fresh_s:7.2f} s")
    print(f"4 critic steps, one shared rollout:   {shared_s:7.2f} s  ({fresh_s / shared_s:.2f}x cheaper)")
    print(f"1 generator step:                     {generator_s:7.2f} s")
    ok = ratio >= 1.5
    text = f"a whole cycle is {ratio:.2f}x cheaper with sharing (target >= 1.5)"
    print(("PASS " if ok else "FAIL ") + text)
    report.table(
        "Seconds per part of a cycle",
        ["work", "seconds", "fresh / shared"],
        [
            [f"{CRITIC_STEPS} critic steps, a fresh rollout each", fresh_s, 1.0],
            [f"{CRITIC_STEPS} critic steps, one shared rollout", shared_s, fresh_s / shared_s],
            ["1 generator step", generator_s, None],
            ["whole cycle, fresh rollouts", fresh_s + generator_s, ratio],
            ["whole cycle, shared rollout", shared_s + generator_s, None],
        ],
    )
    report.check(ok, text)
    report.note(
        "Between two generator updates the generator does not change, so the critic steps of a cycle can "
        "take their windows from one detached rollout (stage.critic_windows_per_rollout); the generator "
        "step keeps its own rollout, whose graph it needs."
    )
    report.write(args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
