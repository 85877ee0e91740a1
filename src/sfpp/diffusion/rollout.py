"""Chunk-wise few-step streaming rollout through a rolling KV cache.

For each chunk of ``num_frames_per_chunk`` latent frames:

1. start from Gaussian noise at the first denoising timestep;
2. for every timestep of the few-step list, predict the flow conditioned on the cache, turn it
   into a clean estimate ``x0 = x_t - sigma * flow`` and, unless it is the last step, re-noise that
   estimate to the next timestep with fresh noise (the few-step consistency sampler of CausVid /
   Self-Forcing);
3. run the model once more on the clean chunk at ``context_timestep`` (0) so its keys and values
   join the cache, exactly as at inference time (:meth:`CausalWanDiT.write_chunk`, which skips the
   last block's attention and feed-forward and the head: nothing reads that pass's output).

Chunks are yielded as soon as they are finished, so a caller can decode and write a long video
while it is being generated, with memory that does not grow with its length. Training (which adds
gradient control) and inference share this code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from sfpp.diffusion.policy import ChunkTrajectory, StepTransition
from sfpp.diffusion.prefix import hold_given_frames
from sfpp.diffusion.schedule import FlowMatchSchedule, add_noise, x0_from_flow
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.kv_cache import RollingKVCache

__all__ = ["FewStepSampler", "RolloutChunk", "rollout", "rollout_from_seed", "stream_rollout", "write_prefix"]


@dataclass(frozen=True)
class FewStepSampler:
    """The student's few-step denoising schedule.

    Args:
        timesteps: Denoising timesteps on the 0..1000 scale, strictly decreasing, already warped
            through the shifted schedule (see :meth:`FlowMatchSchedule.warp_timesteps`).
        context_timestep: Timestep of the clean pass that writes a finished chunk into the cache;
            above 0, the chunk is re-noised to that level for the pass (Self-Forcing's
            ``context_noise``), with one more noise draw per chunk.
        num_train_timesteps: Scale of the timesteps (sigma = t / num_train_timesteps).
    """

    timesteps: Sequence[float]
    context_timestep: float = 0.0
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        steps = list(self.timesteps)
        if not steps:
            raise ValueError("FewStepSampler needs at least one denoising timestep")
        if any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"denoising timesteps must be strictly decreasing, got {steps}")
        if steps[0] > self.num_train_timesteps or steps[-1] <= 0:
            raise ValueError(f"denoising timesteps must lie in (0, {self.num_train_timesteps}], got {steps}")
        if not 0 <= self.context_timestep < steps[-1]:
            raise ValueError(
                f"context_timestep must lie in [0, {steps[-1]}) (below the last denoising step), "
                f"got {self.context_timestep}"
            )

    @classmethod
    def from_steps(
        cls, steps: Sequence[float] = (1000, 750, 500, 250), shift: float = 5.0, context_timestep: float = 0.0
    ) -> FewStepSampler:
        """Warp a nominal step list (e.g. ``[1000, 750, 500, 250]``) through the shifted schedule."""
        warped = FlowMatchSchedule(shift=shift).warp_timesteps(steps)
        return cls(timesteps=tuple(float(t) for t in warped), context_timestep=context_timestep)

    @property
    def context_sigma(self) -> float:
        """Noise level of the clean pass's input (0 for a clean cache)."""
        return self.context_timestep / self.num_train_timesteps

    @property
    def sigmas(self) -> list[float]:
        """Noise levels of the denoising steps."""
        return [t / self.num_train_timesteps for t in self.timesteps]


@dataclass
class RolloutChunk:
    """A finished chunk of a rollout.

    Attributes:
        frame_offset: Absolute index of its first latent frame.
        latents: Clean latents ``(B, C, F_chunk, H, W)``.
    """

    frame_offset: int
    latents: torch.Tensor


def _check_rollout(model: CausalWanDiT, cache: RollingKVCache, num_frames: int) -> None:
    """Fail before any work for settings that cannot be generated."""
    if not model.config.causal:
        raise ValueError("streaming rollout needs a block-causal model (causal=True)")
    chunk = model.config.num_frames_per_chunk
    if num_frames < 1 or num_frames % chunk:
        raise ValueError(
            f"num_frames={num_frames} is not a positive multiple of num_frames_per_chunk={chunk}; "
            f"round it to whole chunks (e.g. {max(chunk, num_frames - num_frames % chunk)})"
        )
    end = cache.num_frames + num_frames
    if end > model.rope_max_seq_len:
        raise ValueError(
            f"generating frames [{cache.num_frames}, {end}) exceeds the RoPE table of {model.rope_max_seq_len} "
            "latent frames; generate fewer frames or raise the model's `rope_max_seq_len`"
        )


def stream_rollout(
    model: CausalWanDiT,
    context: torch.Tensor,
    cache: RollingKVCache,
    num_frames: int,
    latent_shape: tuple[int, int, int],
    sampler: FewStepSampler,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    exit_steps: Sequence[int] | None = None,
    grad_from_frame: int | None = None,
    noise_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
    transition: StepTransition | None = None,
    trajectory: list[ChunkTrajectory] | None = None,
    first_frames: torch.Tensor | None = None,
) -> Iterator[RolloutChunk]:
    """Generate ``num_frames`` latent frames chunk by chunk, continuing from the cache's state.

    Training (Self-Forcing) controls two things, inference neither:

    * ``exit_steps``: per chunk, the index of the denoising step whose clean estimate is the chunk's
      output; later steps are skipped (the student learns every step count of its schedule).
    * ``grad_from_frame``: chunks starting at or after this frame keep the autograd graph of their
      exit step only; every other model call runs without gradients. ``None`` leaves the
      caller's grad mode in charge of everything.

    Args:
        model: Block-causal :class:`CausalWanDiT`.
        context: Text embeddings ``(B, L_text, text_dim)``.
        cache: Rolling cache from ``model.new_kv_cache``; generation continues at its
            ``num_frames`` (0 for a new video).
        num_frames: Latent frames to generate, a multiple of the model's chunk size.
        latent_shape: ``(C, H, W)`` of one latent frame.
        sampler: The few-step schedule.
        generator: Source of every random draw (seed it for reproducible videos).
        initial_noise: Optional ``(B, C, num_frames, H, W)`` starting noise, drawn from
            ``generator`` chunk by chunk when omitted (which keeps memory flat in length).
        exit_steps: One step index per generated chunk (default: the last step for every chunk).
        grad_from_frame: First frame whose chunk keeps the graph of its exit step.
        noise_fn: Optional source of the per-chunk noise, called with the chunk's shape
            ``(B, C, F_chunk, H, W)`` instead of drawing ``torch.randn`` from ``generator``; it
            returns standard normal noise of that shape (the rollout casts it to the model's device
            and dtype). Data-parallel training uses it to draw the noise of the global batch from a
            shared generator and keep this rank's rows, so that N processes reproduce one process.
        transition: How a step's clean estimate moves to the next step's state (default:
            :class:`~sfpp.diffusion.policy.StepTransition` with ``eta = 1``, the plain re-noising).
        trajectory: When given, a list that receives one
            :class:`~sfpp.diffusion.policy.ChunkTrajectory` per chunk (states, log-probabilities
            of the moves, clean latents; all detached), for the GRPO update.
        first_frames: Clean latents ``(B, C, k, H, W)`` of the first ``k`` frames of the first
            chunk, fewer than a chunk (Wan2.2-TI2V's image conditioning: an image is one latent
            frame). At every step of that chunk they replace the state's first frames and the model
            sees them at timestep 0 (per-frame timesteps), as Wan2.2's pipeline masks the image
            latent; the chunk's output holds them exactly. The other frames are generated.

    Yields:
        One :class:`RolloutChunk` per chunk, in order.

    Raises:
        ValueError: For a cache or length the model cannot serve (see :func:`_check_rollout`), or
            ``first_frames`` that do not fit the first chunk.
    """
    _check_rollout(model, cache, num_frames)
    batch = cache.batch_size
    channels, height, width = latent_shape
    chunk = model.config.num_frames_per_chunk
    if initial_noise is not None and initial_noise.shape != (batch, channels, num_frames, height, width):
        raise ValueError(
            f"initial_noise must be {(batch, channels, num_frames, height, width)}, got {tuple(initial_noise.shape)}"
        )
    param = next(model.parameters())
    shape = (batch, channels, chunk, height, width)
    noise_device = generator.device if generator is not None else param.device

    def draw() -> torch.Tensor:  # on the generator's device, so a CPU generator gives the same video anywhere
        if noise_fn is None:
            return torch.randn(shape, generator=generator, device=noise_device).to(param.device, param.dtype)
        noise = noise_fn(shape)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise_fn must return noise of shape {shape}, got {tuple(noise.shape)}")
        return noise.to(param.device, param.dtype)

    context = context.to(param.dtype)
    sigmas = sampler.sigmas
    transition = transition or StepTransition()
    if first_frames is not None:
        num_given = first_frames.shape[2]
        if first_frames.shape != (batch, channels, num_given, height, width) or not 0 < num_given < chunk:
            raise ValueError(
                f"first_frames must be (B, C, k, H, W) = ({batch}, {channels}, k, {height}, {width}) with "
                f"0 < k < num_frames_per_chunk={chunk}, got {tuple(first_frames.shape)}; whole chunks of "
                "given frames go into the cache with write_prefix"
            )
        if trajectory is not None:
            raise ValueError("first_frames conditions generation; a recorded GRPO trajectory takes none")
        first_frames = first_frames.to(param.device, param.dtype)

    num_chunks = num_frames // chunk
    exits = [len(sigmas) - 1] * num_chunks if exit_steps is None else list(exit_steps)
    if len(exits) != num_chunks or any(not 0 <= e < len(sigmas) for e in exits):
        raise ValueError(
            f"exit_steps must give one step index in [0, {len(sigmas)}) per chunk ({num_chunks} chunks), got {exits}"
        )

    for index, start in enumerate(range(0, num_frames, chunk)):
        frame_offset = cache.num_frames
        x_t = draw() if initial_noise is None else initial_noise[:, :, start : start + chunk].to(param.dtype)
        keeps_grad = grad_from_frame is not None and frame_offset >= grad_from_frame
        record = ChunkTrajectory(frame_offset) if trajectory is not None else None
        given = first_frames if index == 0 else None
        for step in range(exits[index] + 1):
            t = torch.full((batch,), sampler.timesteps[step], device=param.device)
            if given is not None:  # the given frames, clean at timestep 0 (per-frame timesteps)
                x_t, t = hold_given_frames(given, x_t, t)
            grad_mode = (
                torch.is_grad_enabled() if grad_from_frame is None else keeps_grad and step == exits[index]
            )
            with torch.set_grad_enabled(grad_mode):
                flow = model(x_t, t, context, kv_cache=cache, frame_offset=frame_offset)
                x0 = x0_from_flow(flow, x_t, sigmas[step])
            if record is not None:
                record.states.append(x_t.detach())
                record.steps.append(step)
            if step < exits[index]:
                x_next = transition.sample(x0, x_t, sigmas[step], sigmas[step + 1], draw())
                if record is not None:
                    with torch.no_grad():
                        record.log_probs.append(
                            transition.log_prob(x_next, x0, x_t, sigmas[step], sigmas[step + 1])
                        )
                x_t = x_next
            elif transition.stochastic_output:  # the chunk's output is drawn around the last x0
                out = transition.sample(x0, x_t, sigmas[step], 0.0, draw())
                if record is not None:
                    with torch.no_grad():
                        record.log_probs.append(transition.log_prob(out, x0, x_t, sigmas[step], 0.0))
                x0 = out
        if given is not None:
            x0 = torch.cat([given, x0[:, :, given.shape[2] :]], dim=2)  # the given frames, exactly
        # The clean pass: the finished chunk's keys and values join the cache. With a context
        # timestep above 0 the cache sees the chunk re-noised to that level (Self-Forcing's
        # context_noise), from one more draw.
        t = torch.full((batch,), sampler.context_timestep, device=param.device)
        cache_input = x0.detach()
        if sampler.context_timestep > 0:
            cache_input = add_noise(cache_input, draw(), sampler.context_sigma).to(param.dtype)
        model.write_chunk(cache_input, t, context, kv_cache=cache, frame_offset=frame_offset)
        if record is not None:
            record.latents = x0.detach()
            record.cache_input = cache_input
            trajectory.append(record)
        yield RolloutChunk(frame_offset=frame_offset, latents=x0)


def write_prefix(
    model: CausalWanDiT,
    context: torch.Tensor,
    cache: RollingKVCache,
    latents: torch.Tensor,
    sampler: FewStepSampler,
    generator: torch.Generator | None = None,
    noise_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
) -> Iterator[RolloutChunk]:
    """Write given clean latents into the cache as finished chunks, so that generation continues them.

    Each chunk takes the same path as a generated chunk after its last denoising step
    (:func:`stream_rollout`'s clean pass through :meth:`CausalWanDiT.write_chunk`): the cache holds
    exactly what it would hold had a rollout produced these latents, so a rollout that continues
    from here equals, frame for frame, the rest of a rollout whose first chunks were these latents
    (given the same random draws). With a context timestep above 0 each chunk is re-noised to it
    from one draw of ``generator``, as a generated chunk is.

    Args:
        model: Block-causal :class:`CausalWanDiT`.
        context: Text embeddings ``(B, L_text, text_dim)``.
        cache: Rolling cache; the latents start at its ``num_frames``.
        latents: Clean latents ``(B, C, F, H, W)``, ``F`` a multiple of the model's chunk size.
        sampler: The few-step schedule (its context timestep).
        generator: Source of the context noise (only drawn from when the context timestep is above 0).
        noise_fn: Optional source of that noise instead of ``generator``, as in :func:`stream_rollout`
            (data-parallel training draws the global batch's noise and keeps this rank's rows).

    Yields:
        One :class:`RolloutChunk` per written chunk, in order.

    Raises:
        ValueError: For latents that are not whole chunks, that do not match the cache's batch, or
            that would run past the RoPE table.
    """
    if latents.ndim != 5 or latents.shape[0] != cache.batch_size:
        raise ValueError(
            f"prefix latents must be (B={cache.batch_size}, C, F, H, W), got {tuple(latents.shape)}"
        )
    _check_rollout(model, cache, latents.shape[2])
    param = next(model.parameters())
    context = context.to(param.dtype)
    chunk = model.config.num_frames_per_chunk
    batch = cache.batch_size
    noise_device = generator.device if generator is not None else param.device
    for start in range(0, latents.shape[2], chunk):
        frame_offset = cache.num_frames
        clean = latents[:, :, start : start + chunk].to(param.device, param.dtype)
        cache_input = clean
        if sampler.context_timestep > 0:
            if noise_fn is None:
                noise = torch.randn(clean.shape, generator=generator, device=noise_device)
            else:
                noise = noise_fn(tuple(clean.shape))
            noise = noise.to(param.device, param.dtype)
            cache_input = add_noise(clean, noise, sampler.context_sigma).to(param.dtype)
        t = torch.full((batch,), sampler.context_timestep, device=param.device)
        with torch.no_grad():
            model.write_chunk(cache_input, t, context, kv_cache=cache, frame_offset=frame_offset)
        yield RolloutChunk(frame_offset=frame_offset, latents=clean)


def rollout(
    model: CausalWanDiT,
    context: torch.Tensor,
    cache: RollingKVCache,
    num_frames: int,
    latent_shape: tuple[int, int, int],
    sampler: FewStepSampler,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    exit_steps: Sequence[int] | None = None,
    grad_from_frame: int | None = None,
    noise_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
    transition: StepTransition | None = None,
    trajectory: list[ChunkTrajectory] | None = None,
) -> torch.Tensor:
    """Generate ``num_frames`` latent frames and return them concatenated ``(B, C, F, H, W)``.

    Same arguments as :func:`stream_rollout`; use that one for long videos.
    """
    chunks = stream_rollout(
        model,
        context,
        cache,
        num_frames,
        latent_shape,
        sampler,
        generator,
        initial_noise,
        exit_steps,
        grad_from_frame,
        noise_fn,
        transition,
        trajectory,
    )
    return torch.cat([c.latents for c in chunks], dim=2)  # (B, C, F, H, W)


def rollout_from_seed(
    model: CausalWanDiT,
    context: torch.Tensor,
    num_frames: int,
    latent_shape: tuple[int, int, int],
    sampler: FewStepSampler,
    seed: int,
    window_frames: int,
    sink_frames: int = 0,
    cache_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A new video from a seed: a fresh rolling cache and a CPU generator (same video on any device).

    Args:
        model: Block-causal :class:`CausalWanDiT`.
        context: Text embeddings ``(B, L_text, text_dim)``.
        num_frames: Latent frames to generate.
        latent_shape: ``(C, H, W)`` of one latent frame.
        sampler: The few-step schedule.
        seed: Seed of every random draw.
        window_frames: Past frames kept by the cache.
        sink_frames: Frames from the start kept by the cache.
        cache_dtype: Cache dtype (default: the model's).

    Returns:
        Latents ``(B, C, F, H, W)``.
    """
    cache = model.new_kv_cache(
        context.shape[0],
        *latent_shape[1:],
        window_frames=window_frames,
        sink_frames=sink_frames,
        dtype=cache_dtype,
    )
    generator = torch.Generator().manual_seed(seed)
    return rollout(model, context, cache, num_frames, latent_shape, sampler, generator)
