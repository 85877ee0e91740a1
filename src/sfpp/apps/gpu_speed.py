"""The GPU check's speed measurements: the matrix-product peak and streaming speed (:mod:`sfpp.apps.gpu_check`)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sfpp.apps.gpu_shapes import CheckShapes

__all__ = ["WAN_TEMPORAL_STRIDE", "chunk_flops", "matmul_tflops", "stream_speed"]

#: Video frames per latent frame of the Wan2.1 VAE (its first latent frame decodes to one).
WAN_TEMPORAL_STRIDE = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocations, or the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


# -- 3. streaming speed ------------------------------------------------------------------------------


def matmul_tflops(device: torch.device, size: int, dtype: torch.dtype, min_seconds: float = 2.0) -> float:
    """Measured TFLOP/s of a square ``size`` matrix product in ``dtype``, over at least ``min_seconds``.

    A GPU's clocks ramp up under load: a one-second warm-up runs first, then batches of products
    are timed until ``min_seconds`` have passed (a few tens of milliseconds read low).
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def timed(seconds: float) -> tuple[int, float]:
        count, began = 0, time.perf_counter()
        while True:
            for _ in range(10):
                a @ b
            _sync(device)
            count += 10
            elapsed = time.perf_counter() - began
            if elapsed >= seconds:
                return count, elapsed

    timed(min(1.0, min_seconds / 2))
    count, elapsed = timed(min_seconds)
    return 2 * size**3 * count / elapsed / 1e12


def chunk_flops(model: Any, tokens: int, context_tokens: int, text_len: int) -> float:
    """FLOPs of one chunk forward: the linear layers, self-attention over the cache, cross-attention."""
    dim, ffn = model.config.dim, model.blocks[0].ffn[0].out_features
    linear = 2 * tokens * (6 * dim * dim + 2 * dim * ffn)  # q, k, v, o, cross q, o; feed-forward
    attention = 4 * tokens * (context_tokens + text_len) * dim
    return float(model.config.num_layers * (linear + attention))


def stream_speed(
    shapes: CheckShapes, device: torch.device, dtype: torch.dtype, vae_dir: Path | None
) -> dict[str, Any]:
    """Stream ``stream_chunks`` chunks after ``warmup_chunks``, optionally decoding each with the VAE."""
    from sfpp.diffusion.rollout import FewStepSampler, stream_rollout
    from sfpp.models import build_model

    torch.manual_seed(0)
    model = (
        build_model(
            shapes.flavour, causal=True, num_frames_per_chunk=shapes.chunk_frames, **shapes.model_overrides
        )
        .to(device=device, dtype=dtype)
        .eval()
        .requires_grad_(False)
    )
    sampler = FewStepSampler.from_steps(list(shapes.steps), shift=5.0)
    context = torch.randn(1, shapes.text_len, model.config.text_dim, device=device, dtype=dtype)
    latent_shape = (model.config.in_channels, shapes.latent_height, shapes.latent_width)
    decoder_factory: Callable[[], Any] | None = None
    if vae_dir is not None:
        from sfpp.codecs import WanVAECodec

        codec = WanVAECodec(vae_dir, dtype=dtype, device=device)
        decoder_factory = codec.stream_decoder

    def video(num_chunks: int) -> tuple[list[float], list[int]]:
        """Cumulative seconds at the end of each chunk, and each chunk's video frames."""
        cache = model.new_kv_cache(
            1,
            shapes.latent_height,
            shapes.latent_width,
            window_frames=shapes.window_frames - shapes.chunk_frames,
            dtype=dtype,
        )
        decoder = decoder_factory() if decoder_factory is not None else None
        times, frames = [], []
        _sync(device)
        began = time.perf_counter()
        with torch.no_grad():
            for chunk in stream_rollout(
                model,
                context,
                cache,
                num_chunks * shapes.chunk_frames,
                latent_shape,
                sampler,
                torch.Generator().manual_seed(0),
            ):
                if decoder is not None:
                    frames.append(decoder.decode_chunk(chunk.latents).shape[2])
                else:  # the frames the Wan VAE would decode: 1 for the first latent frame, 4 for each other
                    first = chunk.frame_offset == 0
                    frames.append(
                        chunk.latents.shape[2] * WAN_TEMPORAL_STRIDE - (WAN_TEMPORAL_STRIDE - 1) * first
                    )
                _sync(device)
                times.append(time.perf_counter() - began)
        return times, frames

    video(shapes.warmup_chunks)  # kernels, allocator and caches warm
    _reset_peak(device)
    # Chunks are timed once the cache holds its full window, so that each costs what the FLOPs count.
    fill = -(-(shapes.window_frames - shapes.chunk_frames) // shapes.chunk_frames)
    times, frames = video(fill + shapes.stream_chunks)
    steady = times[-1] - times[fill - 1] if fill else times[-1]
    steady_frames = sum(frames[fill:])
    tokens = shapes.chunk_frames * model.tokens_per_frame(shapes.latent_height, shapes.latent_width)
    context_tokens = shapes.window_frames * model.tokens_per_frame(shapes.latent_height, shapes.latent_width)
    # each chunk: one forward per denoising step and one cache write
    flops = (len(shapes.steps) + 1) * chunk_flops(model, tokens, context_tokens, shapes.text_len)
    return {
        "decode": vae_dir is not None,
        "frames": "video frames"
        + ("" if vae_dir is not None else " (4 per latent frame, as the Wan VAE decodes)"),
        "chunks_timed": shapes.stream_chunks,
        "chunks_before_timing": fill,
        "frames_per_second": steady_frames / steady,
        "first_chunk_latency_s": times[0],
        "seconds_per_chunk": steady / shapes.stream_chunks,
        "model_tflops_per_chunk": flops / 1e12,
        "model_tflops_per_second": flops * shapes.stream_chunks / steady / 1e12,
        "peak_memory_gib": _peak_gib(device),
    }
