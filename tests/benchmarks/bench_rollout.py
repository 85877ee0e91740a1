"""Streaming rollout cost of the toy student far past the teacher horizon, three ways, per batch size.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_rollout.py            # full run, batch 1 and 8 (see README)
    .venv/bin/python tests/benchmarks/bench_rollout.py --quick    # smoke run, batch 1 and 2

Setting: ``build_model("toy", causal=True, num_frames_per_chunk=3, attention_backend="sdpa")``,
latent frames of (3, 16, 16) = 16 tokens, the few-step sampler
``FewStepSampler.from_steps([1000, 750, 500, 250], shift=5)``, teacher horizon K = 21 latent frames,
rolling window of 21 past frames, ``torch.no_grad()``, 2 intra-op threads. Rollouts go to 5x, 10x,
20x and 50x the horizon (105, 210, 420 and 1050 latent frames).

The whole comparison (state building, a == b checks, timing rounds, memory, targets) runs once per
batch size of ``--batch-sizes`` (default 1 and 8, the DMD training batch of the toy experiments):
every method generates ``B`` videos together (cache, noise, text context and the no-cache input
all have batch ``B``). The batch matters because a chunk of ``a`` is tiny at batch 1 (48 query
tokens per forward): its time is mostly the fixed cost of each eager operator, which does not grow
with the batch, while ``c`` runs 8x more tokens per forward and is closer to compute-bound. A larger
batch moves c/a towards the compute-bound ratio of 4 x 384 / (5 x 48) = 6.4x (a little more since
the clean pass skips the last block's attention and feed-forward, plus the attention
saving). The targets are evaluated, and printed PASS/FAIL, for every batch size separately.

Methods, all generating chunk by chunk (3 frames, 4 denoising forwards each):

* ``a``: the library's :class:`~sfpp.models.kv_cache.RollingKVCache` (ring buffer, a chunk write
  touches only its own slots) through :func:`sfpp.diffusion.stream_rollout`, plus the clean pass
  that writes the chunk into the cache (:meth:`CausalWanDiT.write_chunk`: 4 forwards of one chunk
  and an output-free clean pass per chunk).
* ``b``: the same rollout with :class:`RollByCopyKVCache` below, which keeps frames in time order
  and, once full, shifts the whole buffer left by one chunk with a copy before writing the chunk at
  the end (the layout of the public Self-Forcing code). It must generate the same latents as ``a``.
* ``c``: no cache: every denoising step re-runs the model on the last ``window`` clean frames
  (timestep 0) plus the noisy chunk under the block-causal pattern (4 forwards of 24 frames per
  chunk, no clean pass). The clean frames' keys are recomputed from a truncated context, so ``c``
  is a different approximation of the video than ``a``; it is timed, not compared.

See ``README.md`` next to this file for how the numbers are measured and how to read them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from results_json import BenchReport
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from sfpp.diffusion import FewStepSampler, add_noise, stream_rollout, x0_from_flow
from sfpp.models import CausalWanDiT, FrameAttentionPattern, RollingKVCache, build_model

HORIZON = 21  # teacher horizon K, latent frames (5 s at 16 fps, 4x temporal VAE compression)
CHUNK = 3  # latent frames per chunk
LATENT = (3, 16, 16)  # (C, H, W) of one toy latent frame -> 16 tokens with patch (1, 4, 4)
STEPS = (1000, 750, 500, 250)
SHIFT = 5.0
TEXT_TOKENS = 16  # length of the (random) text embedding sequence
FLAT_LIMIT = 1.15  # target: a's per-chunk time at the last length / at the first length
SPEEDUP_TARGET = 5.0  # target: c's per-chunk time / a's at 20x the horizon
SPEEDUP_AT = 20.0
LATENT_TOL = 1e-5  # a vs b latents
NOISY_SPREAD = 0.25  # half-IQR / median above which a cell is flagged as disturbed
METHODS = ("a", "b", "c")
console = Console(highlight=False, width=150)


# 1. The roll-by-copy cache (method b) -------------------------------------------------------------


class RollByCopyKVCache(RollingKVCache):
    """A rolling cache that keeps frames in time order and shifts the buffer when it is full.

    Layout per layer: ``[sink_0 .. sink_{S-1} | oldest .. newest]``. While the ring part has room, a
    chunk is appended after the newest frame; once it is full, the ring part is shifted left by the
    frames that fall out of the window (a copy of the whole ring part through a temporary) and the
    chunk is written at the end. The visible frames are the same set as
    :class:`~sfpp.models.kv_cache.RollingKVCache`'s (only their order in the buffer differs, which
    attention does not see because RoPE is applied before caching).
    """

    def _ring_frames_held(self, num_frames: int) -> int:
        """Frames held in the ring part once ``num_frames`` frames have been written."""
        return min(self.window_frames, max(0, num_frames - self.sink_frames))

    def visible(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinks, then the held recent frames oldest first: a prefix of the buffer."""
        frames = min(self.sink_frames, self.num_frames) + self._ring_frames_held(self.num_frames)
        end = frames * self.tokens_per_frame
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the chunk that starts at ``num_frames``; shift the ring part first if it is full."""
        tpf, sinks = self.tokens_per_frame, self.sink_frames
        num_new = keys.shape[1] // tpf
        start = self.num_frames
        to_sinks = max(0, min(sinks - start, num_new))  # leading frames of the chunk that are sinks
        for buf, new in ((self.keys, keys), (self.values, values)):
            if to_sinks:
                buf[layer, :, start * tpf : (start + to_sinks) * tpf] = new[:, : to_sinks * tpf]
            rest = num_new - to_sinks
            if not rest:
                continue
            held = self._ring_frames_held(start + to_sinks)
            evict = max(0, held + rest - self.window_frames)
            if evict:  # roll: shift the kept frames to the front of the ring part, by copy
                keep = held - evict
                src = buf[layer, :, (sinks + evict) * tpf : (sinks + held) * tpf]
                buf[layer, :, sinks * tpf : (sinks + keep) * tpf] = src.clone()
                held = keep
            begin = (sinks + held) * tpf
            buf[layer, :, begin : begin + rest * tpf] = new[:, to_sinks * tpf :]

    def load_ring_state(self, ring: RingSnapshot) -> None:
        """Take the state of a :class:`RollingKVCache` snapshot, reordering its slots in time order."""
        tpf, sinks, window = self.tokens_per_frame, self.sink_frames, self.window_frames
        n = ring.num_frames
        frames = list(range(min(sinks, n))) + list(range(max(sinks, n - window), n))
        slots = [f if f < sinks else sinks + (f - sinks) % window for f in frames]
        tokens = torch.tensor([s * tpf + t for s in slots for t in range(tpf)], dtype=torch.long)
        end = len(frames) * tpf
        self.keys[:, :, :end] = ring.keys[:, :, tokens]
        self.values[:, :, :end] = ring.values[:, :, tokens]
        self.num_frames = n
        self.cross_kv = list(ring.cross_kv)


# 2. State snapshots and the no-cache chunk (method c) -----------------------------------------


@dataclass
class RingSnapshot:
    """State of method a's rollout just before a chunk: cache buffers, frame count, random state."""

    keys: torch.Tensor
    values: torch.Tensor
    num_frames: int
    cross_kv: list
    generator_state: torch.Tensor


def snapshot(cache: RollingKVCache, generator: torch.Generator) -> RingSnapshot:
    return RingSnapshot(
        cache.keys.clone(),
        cache.values.clone(),
        cache.num_frames,
        list(cache.cross_kv),
        generator.get_state(),
    )


def restore_ring(cache: RollingKVCache, snap: RingSnapshot) -> None:
    cache.keys.copy_(snap.keys)
    cache.values.copy_(snap.values)
    cache.num_frames = snap.num_frames
    cache.cross_kv = list(snap.cross_kv)


def new_cache(
    model: CausalWanDiT, cls: type[RollingKVCache], window: int, batch: int, sink_frames: int = 0
) -> RollingKVCache:
    """An empty cache of class ``cls`` for ``batch`` videos of toy latent frames."""
    param = next(model.parameters())
    return cls(
        num_layers=model.config.num_layers,
        batch_size=batch,
        num_heads=model.config.num_heads,
        head_dim=model.config.head_dim,
        tokens_per_frame=model.tokens_per_frame(*LATENT[1:]),
        num_frames_per_chunk=model.config.num_frames_per_chunk,
        window_frames=window,
        sink_frames=sink_frames,
        dtype=param.dtype,
        device=param.device,
    )


def no_cache_chunk(
    model: CausalWanDiT,
    context: torch.Tensor,
    clean: torch.Tensor,
    first_frame: int,
    sampler: FewStepSampler,
    pattern: FrameAttentionPattern,
    generator: torch.Generator,
) -> torch.Tensor:
    """Generate one chunk without a cache, conditioned on ``clean`` frames ``(B, C, window, H, W)``.

    Every denoising step is one full-sequence forward of ``[clean, x_t]``, frame positions starting
    at ``first_frame`` (the absolute index of the first clean frame). The batch ``B`` of ``clean``
    sets the batch of the noise (``context`` must have the same batch). Returns the chunk's latents
    ``(B, C, CHUNK, H, W)``.
    """
    batch, num_clean = clean.shape[0], clean.shape[2]
    shape = (batch, *LATENT[:1], CHUNK, *LATENT[1:])
    x_t = torch.randn(shape, generator=generator)
    x0 = x_t
    sigmas = sampler.sigmas
    for step, (timestep, sigma) in enumerate(zip(sampler.timesteps, sigmas, strict=True)):
        x = torch.cat([clean, x_t], dim=2)  # (B, C, W + CHUNK, H, W)
        steps = torch.cat([torch.zeros(batch, num_clean), torch.full((batch, CHUNK), timestep)], dim=1)
        flow = model(x, steps, context, frame_offset=first_frame, attention_pattern=pattern)
        x0 = x0_from_flow(flow[:, :, num_clean:], x_t, sigma)
        if step + 1 < len(sigmas):
            x_t = add_noise(x0, torch.randn(shape, generator=generator), sigmas[step + 1])
    return x0


# 3. Measurement helpers -----------------------------------------------------------------------


@dataclass
class Setup:
    """Everything one batch size's measurements share: model, inputs and method a's rollout."""

    model: CausalWanDiT
    context: torch.Tensor  # (batch, TEXT_TOKENS, text_dim)
    sampler: FewStepSampler
    window: int
    pattern: FrameAttentionPattern
    batch: int
    latents: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # method a's video
    snapshots: dict[int, RingSnapshot] = field(default_factory=dict)  # by chunk index


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def half_iqr(values: list[float]) -> float:
    """Half the inter-quartile range relative to the median (a robust relative spread)."""
    if len(values) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(values, n=4)
    return 0.5 * (q3 - q1) / statistics.median(values)


def fmt_time(seconds: float, spread: float) -> str:
    """``0.0512 ±4%``; the spread is left out when there were too few chunks to estimate it."""
    return f"{seconds:.4f}" if math.isnan(spread) else f"{seconds:.4f} ±{spread:.0%}"


def chunk_maker(
    setup: Setup, method: str, start_chunk: int, cache: RollingKVCache | None
) -> tuple[Callable[[], torch.Tensor], int]:
    """A zero-argument callable producing the chunks from ``start_chunk`` on, and its state bytes.

    Methods a and b resume from method a's snapshot (b's buffer is reordered in time order); method c
    starts from method a's last ``window`` clean frames and then conditions on its own chunks.
    """
    model, context, sampler = setup.model, setup.context, setup.sampler
    snap = setup.snapshots[start_chunk]
    if method in ("a", "b"):
        assert cache is not None
        if isinstance(cache, RollByCopyKVCache):
            cache.load_ring_state(snap)
        else:
            restore_ring(cache, snap)
        generator = torch.Generator().set_state(snap.generator_state)
        frames_left = setup.latents.shape[2] - snap.num_frames
        stream: Iterator = stream_rollout(model, context, cache, frames_left, LATENT, sampler, generator)
        cross = sum(t.numel() * t.element_size() for kv in cache.cross_kv for t in kv)
        return (lambda: next(stream).latents), cache.nbytes + cross
    first = start_chunk * CHUNK
    state = {"clean": setup.latents[:, :, first - setup.window : first].clone(), "frame": first}
    generator = torch.Generator().manual_seed(10_000 + start_chunk)

    def make_next() -> torch.Tensor:
        clean, frame = state["clean"], state["frame"]
        chunk = no_cache_chunk(model, context, clean, frame - setup.window, sampler, setup.pattern, generator)
        state["clean"] = torch.cat([clean, chunk], dim=2)[:, :, CHUNK:]
        state["frame"] = frame + CHUNK
        return chunk

    return make_next, state["clean"].numel() * state["clean"].element_size()


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines and its warning about blocks allocated earlier."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_transient_bytes(run: Callable[[], None]) -> int:
    """Peak bytes of torch CPU tensors allocated while ``run()`` executes and alive at the same time.

    Uses the profiler's allocator events (``profile_memory=True``): each ``[memory]`` event carries
    the allocator's running total of bytes allocated since profiling began and not yet freed.
    """
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - base


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_pressure() -> str:
    """Linux pressure-stall information: share of time some task waited for a CPU (10 s, 60 s)."""
    try:
        with open("/proc/pressure/cpu") as f:
            fields = dict(kv.split("=") for kv in f.readline().split()[1:])
        return f"CPU pressure (some) {fields['avg10']}% / {fields['avg60']}% over 10 s / 60 s"
    except (OSError, KeyError, ValueError):
        return "CPU pressure n/a"


def fail(message: str) -> None:
    console.print(f"[bold red]ABORT: {message}[/bold red]")
    sys.exit(2)


# 4. Phases ------------------------------------------------------------------------------------


def warm_up(setup: Setup, start_chunk: int) -> None:
    """A few untimed chunks of every method from a snapshot, at the timing thread count."""
    for method, count in (("a", 3), ("b", 3), ("c", 1)):
        cls = RollingKVCache if method == "a" else RollByCopyKVCache
        cache = None if method == "c" else new_cache(setup.model, cls, setup.window, setup.batch)
        make_next, _ = chunk_maker(setup, method, start_chunk, cache)
        for _ in range(count):
            make_next()


def continuous_rollout(setup: Setup, max_frames: int, snap_at: set[int], seed: int) -> list[float]:
    """Method a, one rollout to ``max_frames``, each chunk timed as it is yielded.

    Keeps the video (``setup.latents``) and snapshots of the state before the chunks in ``snap_at``.
    """
    model, context, sampler = setup.model, setup.context, setup.sampler
    generator = torch.Generator().manual_seed(seed)
    cache = new_cache(model, RollingKVCache, setup.window, setup.batch)
    stream = stream_rollout(model, context, cache, max_frames, LATENT, sampler, generator)
    times, chunks = [], []
    gc.collect()
    gc.disable()
    try:
        for index in range(max_frames // CHUNK):
            if index in snap_at:
                setup.snapshots[index] = snapshot(cache, generator)
            t0 = time.perf_counter()
            out = next(stream)
            times.append(time.perf_counter() - t0)
            chunks.append(out.latents)
    finally:
        gc.enable()
    setup.latents = torch.cat(chunks, dim=2)  # (B, C, max_frames, H, W)
    return times


def check_b_from_scratch(setup: Setup, num_frames: int, seed: int) -> float:
    """Max |b - a| over a fresh rollout of ``num_frames`` with method a's seed; aborts if too large."""
    cache = new_cache(setup.model, RollByCopyKVCache, setup.window, setup.batch)
    gen = torch.Generator().manual_seed(seed)
    stream = stream_rollout(setup.model, setup.context, cache, num_frames, LATENT, setup.sampler, gen)
    video = torch.cat([c.latents for c in stream], dim=2)
    diff = (video - setup.latents[:, :, :num_frames]).abs().max().item()
    if not diff <= LATENT_TOL:
        fail(
            f"at batch {setup.batch}, the roll-by-copy cache (b) generates different latents from the ring "
            f"buffer (a) over {num_frames} frames: max |diff| {diff:.3g} > {LATENT_TOL:g}"
        )
    return diff


def check_b_with_sinks(setup: Setup, window: int = 9, sinks: int = 3, num_frames: int = 45) -> float:
    """Max |b - a| with sink frames (b keeps them in place while its ring part rolls); aborts if large."""
    videos = []
    for cls in (RollingKVCache, RollByCopyKVCache):
        cache = new_cache(setup.model, cls, window, setup.batch, sink_frames=sinks)
        gen = torch.Generator().manual_seed(5)
        stream = stream_rollout(setup.model, setup.context, cache, num_frames, LATENT, setup.sampler, gen)
        videos.append(torch.cat([c.latents for c in stream], dim=2))
    diff = (videos[1] - videos[0]).abs().max().item()
    if not diff <= LATENT_TOL:
        fail(
            f"at batch {setup.batch}, with {sinks} sink frames and a {window}-frame window, b differs from a: "
            f"max |diff| {diff:.3g}"
        )
    return diff


def timing_rounds(
    setup: Setup,
    cells: list[tuple[str, int]],
    starts: dict[int, int],
    args: argparse.Namespace,
    deadline: float,
) -> tuple[dict[tuple[str, int], list[float]], dict[str, float]]:
    """Per-chunk wall times of every (method, length) cell, interleaved chunk by chunk.

    In each round every cell resumes from the state where its length's sample starts and runs one
    untimed chunk; then, ``sample_chunks`` times, one chunk of every cell is timed in turn, the
    order rotating at every step. The machine's speed drifts by 10-20 % over seconds even when it is
    idle (and much more when it is shared), so interleaving at the finest grain makes every cell see
    the same conditions; the cost of switching is small (a chunk of a after a chunk of c is ~2 %
    slower than after a chunk of a). Once ``deadline`` is passed the timing stops after the current
    step (at least 2 steps), so every cell keeps the same count. Also returns the max |diff| of the
    resumed a and b chunks against the continuous rollout.
    """
    model, window = setup.model, setup.window
    caches = {
        cell: new_cache(model, RollingKVCache if cell[0] == "a" else RollByCopyKVCache, window, setup.batch)
        for cell in cells
        if cell[0] != "c"
    }
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    max_diff = {"a": 0.0, "b": 0.0}
    steps = 0
    for rnd in range(args.repeats):
        makers = {cell: chunk_maker(setup, cell[0], starts[cell[1]], caches.get(cell))[0] for cell in cells}
        outputs = {cell: [make()] for cell, make in makers.items()}  # untimed first chunk
        stop = False
        gc.collect()
        gc.disable()
        try:
            for step in range(args.sample_chunks):
                shift = (step + rnd * args.sample_chunks) % len(cells)
                for cell in cells[shift:] + cells[:shift]:
                    t0 = time.perf_counter()
                    out = makers[cell]()
                    times[cell].append(time.perf_counter() - t0)
                    outputs[cell].append(out)
                steps += 1
                if time.perf_counter() > deadline and steps >= 2:
                    stop = True
                    break
        finally:
            gc.enable()
        for (method, n), outs in outputs.items():
            if method in max_diff:
                ref = setup.latents[:, :, starts[n] * CHUNK : (starts[n] + len(outs)) * CHUNK]
                max_diff[method] = max(max_diff[method], (torch.cat(outs, dim=2) - ref).abs().max().item())
        if stop:
            break
    for method, d in max_diff.items():
        if not d <= LATENT_TOL:
            fail(
                f"at batch {setup.batch}, method {method} resumed from a snapshot differs from the continuous "
                f"rollout: {d:.3g}"
            )
    return times, max_diff


def peak_memory(
    setup: Setup, cells: list[tuple[str, int]], starts: dict[int, int]
) -> dict[tuple[str, int], int]:
    """Persistent state bytes + peak transient tensor bytes of one chunk, per (method, length)."""
    peak = {}
    for method, n in cells:
        cls = RollingKVCache if method == "a" else RollByCopyKVCache
        cache = None if method == "c" else new_cache(setup.model, cls, setup.window, setup.batch)
        make_next, state = chunk_maker(setup, method, starts[n], cache)
        peak[method, n] = state + peak_transient_bytes(make_next)
    return peak


# 5. One batch size ---------------------------------------------------------------------------


@dataclass
class BatchResult:
    """The measurements of one batch size (every method ran with this batch)."""

    batch: int
    times: dict[tuple[str, int], list[float]]  # per-chunk wall times by (method, length)
    continuous: list[float]  # per-chunk times of the state-building rollout of method a
    peak: dict[tuple[str, int], int]  # peak bytes of one chunk by (method, length); empty with --no-memory
    cache_bytes: int  # K/V buffers of one RollingKVCache at this batch
    per_cell: int  # timed chunks per (method, length)
    planned: int  # chunks per cell the rounds would time without --budget
    med: dict[tuple[str, int], float] = field(init=False)  # median seconds per chunk by (method, length)
    spread: dict[tuple[str, int], float] = field(init=False)  # half-IQR / median by (method, length)

    def __post_init__(self) -> None:
        self.med = {cell: median(v) for cell, v in self.times.items()}
        self.spread = {cell: half_iqr(v) for cell, v in self.times.items()}

    def disturbances(self) -> list[str]:
        """Why this batch size's timings should not be trusted (empty when they look clean)."""
        noisy = [f"{k}@{n}" for (k, n), v in self.spread.items() if v > NOISY_SPREAD]
        return [f"spread > {NOISY_SPREAD:.0%} in {', '.join(noisy)}"] if noisy else []

    def shortfall(self) -> str | None:
        """A note when ``--budget`` stopped the timing before the planned rounds (a slower machine)."""
        if self.per_cell >= self.planned:
            return None
        return f"only {self.per_cell} of {self.planned} chunks per cell within --budget"


def run_batch(
    args: argparse.Namespace,
    model: CausalWanDiT,
    sampler: FewStepSampler,
    batch: int,
    lengths: list[int],
    starts: dict[int, int],
) -> BatchResult:
    """The whole comparison at one batch size: state building, a == b checks, timing, memory.

    Every method generates ``batch`` videos together: the caches, the noise draws, the text context
    (rows drawn from the same seed at every batch size, so row 0 is the batch-1 context) and method
    c's recomputed window all have this batch. ``--budget`` counts from the start of this call.
    """
    t_batch = time.perf_counter()
    console.rule(f"batch {batch}", style="bold")
    context = torch.randn(batch, TEXT_TOKENS, 64, generator=torch.Generator().manual_seed(args.seed + 1))
    pattern = FrameAttentionPattern(CHUNK, window_frames=args.window)
    setup = Setup(model, context, sampler, args.window, pattern, batch)
    max_frames = lengths[-1]
    full_window_chunk = args.window // CHUNK
    sample = args.sample_chunks
    cells = [(m, n) for n in lengths for m in METHODS]

    phase = time.perf_counter()
    torch.set_num_threads(args.build_threads)
    continuous = continuous_rollout(setup, max_frames, set(starts.values()), args.seed + 2)
    diff_b = check_b_from_scratch(setup, lengths[0], args.seed + 2)
    diff_sinks = check_b_with_sinks(setup)
    console.print(
        f"state: method a rolled out {batch} x {max_frames} frames in {sum(continuous):.1f} s "
        f"(median {median(continuous[full_window_chunk:]):.4f} s/chunk at {args.build_threads} thread(s)) "
        f"[{time.perf_counter() - phase:.0f} s with the checks]"
    )
    console.print(
        f"check: b == a from scratch over {lengths[0]} frames ({(lengths[0] - args.window) // CHUNK} "
        f"roll-by-copy shifts): max |diff| {diff_b:.1e}; with 3 sink frames, window 9, 45 frames: "
        f"{diff_sinks:.1e} (<= {LATENT_TOL:g}) OK"
    )

    phase = time.perf_counter()
    torch.set_num_threads(args.threads)
    warm_up(setup, starts[lengths[0]])
    times, max_diff = timing_rounds(setup, cells, starts, args, t_batch + args.budget)
    per_cell = len(times[cells[0]])
    planned = args.repeats * sample
    console.print(
        f"timing: {per_cell} chunks per (method, length)"
        + (f" (of {planned}: stopped by --budget {args.budget:g} s)" if per_cell < planned else "")
        + f"; resumed a, b equal the continuous rollout (max |diff| {max_diff['a']:.1e}, "
        f"{max_diff['b']:.1e}) OK [{time.perf_counter() - phase:.0f} s with warm-up]; {cpu_pressure()}"
    )

    phase = time.perf_counter()
    peak = {} if args.no_memory else peak_memory(setup, cells, starts)
    if peak:
        console.print(
            f"memory: profiled one chunk per (method, length) [{time.perf_counter() - phase:.0f} s]"
        )
    return BatchResult(
        batch=batch,
        times=times,
        continuous=continuous,
        peak=peak,
        cache_bytes=new_cache(model, RollingKVCache, args.window, batch).nbytes,
        per_cell=per_cell,
        planned=planned,
    )


# 6. Report ------------------------------------------------------------------------------------


def print_table(
    results: list[BatchResult],
    multiples: list[float],
    lengths: list[int],
    starts: dict[int, int],
    args: argparse.Namespace,
    tpf: int,
    weights: int,
) -> tuple[list[str], list[list[str]], str]:
    """One table, one section per batch size: per-chunk times, ratios and peak memory.

    Returns:
        The column names, the rows and the legend, as printed.
    """
    sample = args.sample_chunks
    table = Table(
        title="Per-chunk seconds (median over chunks) and peak memory, per batch size", title_justify="left"
    )
    columns = [
        "batch",
        "length",
        "frames",
        "a ring",
        "b roll-copy",
        "c no cache",
        "a/b",
        "a/c",
        "c/a",
        f"a cont. {args.build_threads}thr",
        "MiB a",
        "MiB b",
        "MiB c",
    ]
    for name in columns:
        table.add_column(name, justify="right")
    rows: list[list[str]] = []
    for index, r in enumerate(results):
        if index:
            table.add_section()
        mib = lambda cell, r=r: f"{r.peak[cell] / 2**20:.2f}" if cell in r.peak else "-"  # noqa: E731
        for m, n in zip(multiples, lengths, strict=True):
            cont = r.continuous[starts[n] + 1 : starts[n] + 1 + sample]
            cells = [
                str(r.batch),
                f"{m:g}x",
                str(n),
                *(fmt_time(r.med[k, n], r.spread[k, n]) for k in METHODS),
                f"{r.med['a', n] / r.med['b', n]:.2f}",
                f"{r.med['a', n] / r.med['c', n]:.3f}",
                f"{r.med['c', n] / r.med['a', n]:.2f}x",
                f"{median(cont):.4f}",
                *(mib((k, n)) for k in METHODS),
            ]
            table.add_row(*cells)
            rows.append(cells)
    console.print(table)
    q_a = (len(STEPS) + 1) * CHUNK * tpf
    q_c = len(STEPS) * (args.window + CHUNK) * tpf
    per_cell = ", ".join(f"{r.per_cell} at batch {r.batch}" for r in results)
    caches = ", ".join(f"{r.cache_bytes / 2**20:.2f} MiB at batch {r.batch}" for r in results)
    legend = (
        f"a, b, c: seconds per chunk of all B videos, median over the timed chunks ({per_cell}; rounds of the "
        f"{sample} chunks ending at each length), {args.threads} threads; ± = half the inter-quartile range / "
        f"median. a/b, a/c: time ratios; c/a: speed-up of a over c (the target).\n"
        f"a cont.: median of the same {sample} chunks in the continuous 0..{lengths[-1]}-frame rollout that built "
        f"the states ({args.build_threads} thread(s), one pass; not used for the targets).\n"
        f"Query tokens per chunk and video: a, b {q_a} (4 forwards and the clean pass x {CHUNK * tpf}; the clean "
        f"pass skips the last block's attention and feed-forward and the head); c {q_c} (4 forwards x "
        f"{(args.window + CHUNK) * tpf}): a compute-bound c/a would be ~{q_c / q_a:.1f}x or a little more. A forward at batch B "
        f"runs B times these tokens through the same operator calls, so the fixed per-operator cost, which "
        f"dominates a's small forwards, weighs less as B grows.\n"
        f"MiB: persistent state (a, b: K/V cache {caches}, + text K/V; c: {args.window} clean frames) + peak "
        f"live torch tensors allocated during one chunk; weights ({weights / 2**20:.1f} MiB) excluded."
    )
    console.print(legend)
    return columns, rows, legend


def evaluate_targets(
    results: list[BatchResult], multiples: list[float], lengths: list[int], report: BenchReport | None = None
) -> bool:
    """Print PASS/FAIL of both targets for every batch size, then one verdict line per target.

    Every PASS/FAIL line also goes to ``report`` (when given). Returns whether every target passed
    at every batch size.
    """
    ok = True
    first, last = lengths[0], lengths[-1]
    at = lengths[multiples.index(SPEEDUP_AT)] if SPEEDUP_AT in multiples else None
    flat_verdicts, speed_verdicts = [], []
    for r in results:
        console.print(f"[bold]targets at batch {r.batch}:[/bold]")
        reasons = r.disturbances()
        mark = ", timings disturbed" if reasons else ""
        if reasons:
            console.print(
                f"[bold yellow]WARNING: batch {r.batch} timings disturbed (other processes on the cores?): "
                f"{'; '.join(reasons)}. Rerun on a quieter machine before trusting its verdicts."
                "[/bold yellow]"
            )
        shortfall = r.shortfall()
        if shortfall is not None:
            mark += ", fewer chunks timed"
            console.print(
                f"note: batch {r.batch}: {shortfall} (the machine is slower than the budget assumes; "
                "a larger --budget times more chunks)"
            )
            if report is not None:
                report.note(f"batch {r.batch}: {shortfall}")
        flat = r.med["a", last] / r.med["a", first]
        verdict = "PASS" if flat <= FLAT_LIMIT else "FAIL"
        ok &= flat <= FLAT_LIMIT
        flat_verdicts.append(f"{verdict} at batch {r.batch} ({flat:.3f}{mark})")
        text = (
            f"batch {r.batch}: (a) per-chunk time flat in length: {multiples[-1]:g}x / "
            f"{multiples[0]:g}x = {r.med['a', last]:.4f} / {r.med['a', first]:.4f} = {flat:.3f} "
            f"(<= {FLAT_LIMIT}){mark}"
        )
        console.print(f"{verdict}: {text}")
        if report is not None:
            report.check(flat <= FLAT_LIMIT, text)
        if at is None:
            console.print(f"SKIP: batch {r.batch}: the speed-up target needs {SPEEDUP_AT:g}x in --lengths")
            continue
        speedup = r.med["c", at] / r.med["a", at]
        verdict = "PASS" if speedup >= SPEEDUP_TARGET else "FAIL"
        ok &= speedup >= SPEEDUP_TARGET
        speed_verdicts.append(f"{verdict} at batch {r.batch} ({speedup:.2f}x{mark})")
        text = (
            f"batch {r.batch}: (a) >= {SPEEDUP_TARGET:g}x faster than (c) at {SPEEDUP_AT:g}x the "
            f"horizon: c/a = {r.med['c', at]:.4f} / {r.med['a', at]:.4f} = {speedup:.2f}x{mark}"
        )
        console.print(f"{verdict}: {text}")
        if report is not None:
            report.check(speedup >= SPEEDUP_TARGET, text)
    console.print("[bold]verdict, per batch size:[/bold]")
    console.print(
        f"(a) per-chunk time flat in length, {multiples[-1]:g}x / {multiples[0]:g}x <= {FLAT_LIMIT}: "
        + ", ".join(flat_verdicts)
    )
    console.print(
        f"(a) >= {SPEEDUP_TARGET:g}x faster than (c) at {SPEEDUP_AT:g}x the horizon, c/a >= {SPEEDUP_TARGET:g}: "
        + (", ".join(speed_verdicts) if speed_verdicts else f"SKIP (needs {SPEEDUP_AT:g}x in --lengths)")
    )
    failed = [line for line in flat_verdicts + speed_verdicts if line.startswith("FAIL")]
    console.print(
        "[bold]overall: PASS (every target at every batch size)[/bold]"
        if ok
        else f"[bold red]overall: FAIL ({len(failed)} of {len(flat_verdicts + speed_verdicts)} "
        "target checks failed, see above)[/bold red]"
    )
    return ok


# 7. Main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=None,
        help="rollout lengths as multiples of the 21-frame horizon (default 5 10 20 50; --quick 5 20)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="videos generated together; the whole comparison runs at each (default 1 8; --quick 1 2)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5; --quick 1)")
    parser.add_argument(
        "--sample-chunks",
        type=int,
        default=None,
        help="chunks timed per (method, length) and round, after one untimed chunk (default 12; --quick 6)",
    )
    parser.add_argument("--window", type=int, default=HORIZON, help="past frames in the rolling window")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads while timing")
    parser.add_argument(
        "--build-threads",
        type=int,
        default=1,
        help="threads of the untimed state-building rollout (1 keeps it fast on a loaded machine)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per batch size (from the start of its state building) past which timing stops after "
        "the current step, equal counts per cell (default 480; --quick 60)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: batch 1 and 2, 5x and 20x, 1 round of 6 chunks"
    )
    args = parser.parse_args(argv)
    if args.lengths is None:
        args.lengths = [5.0, 20.0] if args.quick else [5.0, 10.0, 20.0, 50.0]
    if args.batch_sizes is None:
        args.batch_sizes = [1, 2] if args.quick else [1, 8]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.sample_chunks is None:
        args.sample_chunks = 6 if args.quick else 12
    if args.budget is None:
        args.budget = 60.0 if args.quick else 480.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    report = BenchReport(  # started now: its seconds and load average cover the whole run
        "bench_rollout.py",
        "Streaming rollout far past the teacher horizon: ring buffer, roll-by-copy, no cache",
        "",
        threads=args.threads,
    )
    torch.set_num_threads(args.threads)
    if args.window % CHUNK:
        fail(f"--window must be a multiple of the chunk ({CHUNK}) so method c's input is chunk-aligned")
    if min(args.batch_sizes) < 1:
        fail(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    batch_sizes = sorted(set(args.batch_sizes))
    multiples = sorted(set(args.lengths))
    lengths = [max(CHUNK, round(m * HORIZON / CHUNK) * CHUNK) for m in multiples]
    sample = args.sample_chunks
    full_window_chunk = args.window // CHUNK  # first chunk that sees a full window
    starts = {n: n // CHUNK - (sample + 1) for n in lengths}  # first (untimed) chunk of each sample
    for m, n in zip(multiples, lengths, strict=True):
        if starts[n] < full_window_chunk:
            fail(f"{m:g}x = {n} frames is too short to time {sample} chunks with a full window")
    max_frames = lengths[-1]

    console.print("[bold]bench_rollout: streaming rollout of the toy student, 3 ways, per batch size[/bold]")
    console.print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"load average {os.getloadavg()[0]:.2f}, {cpu_pressure()}"
    )
    console.print(
        f"python {platform.python_version()}, torch {torch.__version__}, intra-op threads "
        f"{torch.get_num_threads()} while timing ({args.build_threads} for the untimed state building)"
    )

    # 7.1 Model and sampler, shared by every batch size. 50x the horizon (1050 frames) is past Wan's
    # 1024-frame RoPE table, so the table is sized to the longest rollout (it has no parameters: the
    # weights are unchanged).
    torch.manual_seed(args.seed)
    rope_len = max(1024, max_frames)
    model = build_model(
        "toy", causal=True, num_frames_per_chunk=CHUNK, attention_backend="sdpa", rope_max_seq_len=rope_len
    ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    sampler = FewStepSampler.from_steps(STEPS, shift=SHIFT)
    tpf = model.tokens_per_frame(*LATENT[1:])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    console.print(
        f"model: toy, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({weights / 2**20:.1f} MiB), {model.config.num_layers} layers, dim {model.config.dim}, {tpf} tokens/frame; "
        f"chunk {CHUNK} frames, window {args.window} past frames, timesteps "
        f"{[round(t, 1) for t in sampler.timesteps]}, RoPE table {rope_len} frames"
    )
    console.print(
        f"batch sizes: {', '.join(map(str, batch_sizes))} (each runs the whole comparison, all methods at that "
        f"batch); lengths: {', '.join(f'{m:g}x = {n}' for m, n in zip(multiples, lengths, strict=True))} "
        f"frames; up to {args.repeats} round(s) x {sample} timed chunks per (method, length); --budget "
        f"{args.budget:g} s per batch size"
    )

    # 7.2 The comparison at every batch size, then one table and the targets per batch size.
    results = []
    with torch.no_grad():
        for batch in batch_sizes:
            results.append(run_batch(args, model, sampler, batch, lengths, starts))
            gc.collect()  # drop this batch size's snapshots and video before the next one
    console.rule("results", style="bold")
    columns, rows, legend = print_table(results, multiples, lengths, starts, args, tpf, weights)
    report.setting = (
        f"Toy causal student ({tpf} tokens/frame), chunks of {CHUNK} latent frames, a window of "
        f"{args.window} past frames, {len(STEPS)} denoising steps per chunk; at batch sizes "
        f"{', '.join(map(str, batch_sizes))}, seconds per chunk of all B videos, median over "
        f"{sample}-chunk samples ending at each length, up to {args.repeats} interleaved rounds."
    )
    report.table("Per-chunk seconds (± half the inter-quartile range / median) and peak MiB", columns, rows)
    report.note(legend)
    ok = evaluate_targets(results, multiples, lengths, report)
    report.note(
        "At batch 1 a toy forward of one chunk is overhead-bound: a fixed cost per eager operator "
        "dominates its few query tokens, while the no-cache forwards over the whole window are "
        "compute-bound. A batch multiplies the tokens, not the operator calls, which is why the "
        "speed-up grows with the batch. Roll-by-copy costs little at toy scale (a cache of a few MiB); "
        "at Wan scale the copy is what the ring buffer saves."
    )
    report.write(args.json)
    console.print(f"total {time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
