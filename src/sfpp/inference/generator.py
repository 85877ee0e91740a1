"""Long-video generation: a causal student streamed through its rolling KV cache into an mp4.

:class:`VideoGenerator` holds a trained block-causal student, its text encoder and codec and the
inference settings. For one prompt it

1. plans the video before any work (:meth:`VideoGenerator.plan`): the length in latent frames, the
   RoPE limit, the prompt segments and their text embeddings, so a bad request fails at once;
2. streams it (:meth:`VideoGenerator.run`): :func:`~sfpp.diffusion.rollout.stream_rollout` yields
   chunk after chunk, the codec's stream decoder turns each into frames, and the frames go straight
   to a :class:`~sfpp.io.video.StreamingVideoWriter` and into a bounded
   :class:`~sfpp.inference.frame_record.FrameRecord` for the metrics. Memory is the model, the
   rolling cache, the decoder's state and the record: nothing grows with the length;
3. at a prompt switch, forgets the cached text keys and values so the next chunk recomputes the
   cross-attention K/V from the new prompt, and keeps the self-attention cache (the past frames);
4. writes ``<video>.json`` beside the video: prompts, seed, length, timings and metrics. The writer is
   closed in a ``finally``, so an interrupted run leaves a playable mp4 of the frames generated so
   far and a JSON that says it is incomplete.

Same seed, same video: every random draw comes from a CPU generator seeded with ``seed``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sfpp.codecs.base import VideoCodec, resolve_dtype
from sfpp.diffusion.lengths import VideoTiming
from sfpp.diffusion.rollout import FewStepSampler, RolloutChunk, stream_rollout, write_prefix
from sfpp.inference.frame_record import FrameRecord
from sfpp.inference.metrics import evaluate_segments
from sfpp.inference.prefix import VideoPrefix
from sfpp.inference.prompt_schedule import PromptSegment, first_frame_of_latent, plan_segments
from sfpp.io.video import StreamingVideoWriter
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.config import config_of
from sfpp.models.frame_mask import FrameAttentionPattern
from sfpp.models.kv_cache import RollingKVCache
from sfpp.utils.progress import ProgressReport

__all__ = ["ChunkInfo", "GenerationPlan", "GenerationResult", "VideoGenerator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationPlan:
    """A checked request: everything :meth:`VideoGenerator.run` needs besides the seed.

    Attributes:
        length: The requested length as given (``"60s"`` or latent frames), of what is generated.
        num_latent_frames: Latent frames to generate (whole chunks).
        num_frames: Decoded frames of the video (the given frames' included).
        segments: Prompt segments in order (one without switches), in latent frames of the
            generated part.
        contexts: Text embeddings ``(1, L_text, text_dim)`` of each segment, on the model's device.
        prefix: Given frames the video starts from and continues (:mod:`sfpp.inference.prefix`).
    """

    length: int | str
    num_latent_frames: int
    num_frames: int
    segments: tuple[PromptSegment, ...]
    contexts: tuple[torch.Tensor, ...]
    prefix: VideoPrefix | None = None

    @property
    def prefix_latent_frames(self) -> int:
        """Latent frames written into the cache before the generated ones (0 without, or inside the first chunk)."""
        return 0 if self.prefix is None else self.prefix.written_latent_frames

    @property
    def prompt(self) -> str:
        """The prompt of the start of the video."""
        return self.segments[0].prompt

    def prompt_at(self, latent_frame: int) -> tuple[str, torch.Tensor]:
        """The prompt and text embeddings of the segment that holds ``latent_frame``."""
        for segment, context in zip(self.segments, self.contexts, strict=True):
            if segment.start_frame <= latent_frame < segment.end_frame:
                return segment.prompt, context
        raise ValueError(f"latent frame {latent_frame} is outside the plan's {self.num_latent_frames} frames")


@dataclass(frozen=True)
class ChunkInfo:
    """What a per-chunk callback of :meth:`VideoGenerator.run` receives.

    Attributes:
        index: Chunk index, from 0.
        chunk: The finished chunk (latents and absolute frame offset).
        frames: Its decoded frames ``(3, f, H, W)`` in ``[-1, 1]``.
        prompt: The prompt it was generated under.
        num_frames_written: Decoded frames in the mp4 so far (this chunk's included).
        cache: The rolling KV cache, after this chunk was written to it.
        record: The bounded frame record for the metrics.
    """

    index: int
    chunk: RolloutChunk
    frames: torch.Tensor
    prompt: str
    num_frames_written: int
    cache: RollingKVCache
    record: FrameRecord


@dataclass
class GenerationResult:
    """What :meth:`VideoGenerator.run` wrote.

    Attributes:
        video_path: The mp4.
        json_path: The JSON beside it.
        summary: The JSON's content.
    """

    video_path: Path
    json_path: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float | None]:
        """The video's metrics (``{}`` if none were computed)."""
        return self.summary.get("metrics", {})


class VideoGenerator:
    """Streams long videos from a block-causal student (see the module docstring).

    Args:
        model: The trained block-causal :class:`CausalWanDiT` (its EMA weights, usually).
        text_encoder: ``prompts -> (embeddings (B, L, D), mask)`` (frozen).
        codec: Latents -> frames, with a stream decoder.
        sampler: The student's few-step schedule.
        frame_size: ``(height, width)`` of the decoded frames.
        cache_window_frames: Past frames kept by the rolling KV cache (on top of the current chunk).
        sink_frames: Frames from the start of the video kept by the cache for ever.
        fps: Frame rate of the mp4; also what turns a length in seconds into frames.
        upscale: Nearest-neighbour upscaling of the written frames (8 for the world's 16x16).
        metrics: ``{name: metric}`` computed on the finished video (see :mod:`sfpp.inference.metrics`).
        max_metric_frames: Frames kept for the metrics at most (0: no metrics); see
            :class:`~sfpp.inference.frame_record.FrameRecord`.
        metric_max_side: Longest side of the frames kept for the metrics (``None``: full size).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        dtype: Dtype of the model and its cache (the codec keeps its own).
        checkpoint: Where the model's weights came from, recorded in the JSON.
        show_progress: Show a progress bar with the generation speed.

    Raises:
        ValueError: For settings that cannot work together, naming the setting.
    """

    def __init__(
        self,
        model: CausalWanDiT,
        text_encoder: Any,
        codec: VideoCodec,
        sampler: FewStepSampler,
        frame_size: Sequence[int] = (16, 16),
        cache_window_frames: int = 6,
        sink_frames: int = 0,
        fps: float = 8.0,
        upscale: int = 1,
        metrics: Mapping[str, Any] | None = None,
        max_metric_frames: int = 2048,
        metric_max_side: int | None = 128,
        device: str = "auto",
        dtype: torch.dtype | str = torch.float32,
        checkpoint: str | None = None,
        show_progress: bool = True,
    ) -> None:
        if not getattr(config_of(model), "causal", False):
            raise ValueError("generation needs a block-causal student: build the model with causal=true")
        if len(frame_size) != 2:
            raise ValueError(f"frame_size must be (height, width), got {list(frame_size)}")
        height, width = (int(v) for v in frame_size)
        stride = codec.spatial_stride
        if height % stride or width % stride:
            raise ValueError(
                f"frame_size={[height, width]} is not a multiple of the codec's spatial stride {stride}"
            )
        if model.config.in_channels != codec.latent_channels:
            raise ValueError(
                f"the model takes {model.config.in_channels} latent channels but the codec makes {codec.latent_channels}; "
                "pick the codec the student was trained with"
            )
        try:
            FrameAttentionPattern(model.config.num_frames_per_chunk, cache_window_frames, sink_frames)
        except ValueError as error:
            raise ValueError(
                f"cache_window_frames={cache_window_frames}, sink_frames={sink_frames}: {error}"
            ) from error
        if upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        self.dtype = resolve_dtype(dtype, "dtype")
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.text_encoder = text_encoder
        if isinstance(text_encoder, torch.nn.Module):
            text_encoder.eval().requires_grad_(False)
        self.codec = codec.to(self.device)
        self.sampler = sampler
        self.frame_size = (height, width)
        self.latent_shape = (codec.latent_channels, height // stride, width // stride)
        self.cache_window_frames = cache_window_frames
        self.sink_frames = sink_frames
        self.fps = fps
        self.upscale = upscale
        self.metrics = dict(metrics or {})
        self.max_metric_frames = max_metric_frames
        self.metric_max_side = metric_max_side
        self.checkpoint = checkpoint
        self.show_progress = show_progress
        self.timing = VideoTiming(
            fps=fps,
            temporal_stride=codec.temporal_stride,
            num_frames_per_chunk=model.config.num_frames_per_chunk,
        )
        FrameRecord(1, max_metric_frames, metric_max_side)  # validates the metric settings

    # -- planning (no work) -----------------------------------------------------------------------

    @property
    def max_latent_frames(self) -> int:
        """The longest video the model's RoPE table allows, in latent frames (whole chunks)."""
        chunk = self.model.config.num_frames_per_chunk
        return self.model.rope_max_seq_len // chunk * chunk

    def check_length(self, length: int | str, start: int = 0) -> int:
        """Latent frames of ``length``, or a clear error if the RoPE table is too short for it.

        Args:
            length: Latent frames or seconds.
            start: Latent frames already in the video before these (given frames).
        """
        num_latent_frames = self.timing.parse_length(length)
        limit = self.max_latent_frames - start
        if limit < self.model.config.num_frames_per_chunk:
            raise ValueError(
                f"the given frames take {start} latent frames, the whole of the model's RoPE table "
                f"({self.model.rope_max_seq_len}); give fewer frames (init_video) or raise model.rope_max_seq_len"
            )
        if num_latent_frames > limit:
            if start:
                raise ValueError(
                    f"length={length} is {num_latent_frames} latent frames, but after the {start} latent frames "
                    f"of the given frames the model's RoPE table ({self.model.rope_max_seq_len}) leaves "
                    f"{limit}; ask for a shorter length or give fewer frames"
                )
            raise ValueError(
                f"length={length} is {num_latent_frames} latent frames "
                f"({self.timing.seconds_from_latent_frames(num_latent_frames):.1f} s), but the model's RoPE table "
                f"covers {self.model.rope_max_seq_len} frames: at most {limit} latent frames = "
                f"{self.timing.frames_from_latent_frames(limit)} frames = "
                f"{self.timing.seconds_from_latent_frames(limit):.1f} s at {self.fps:g} fps. Ask for a shorter "
                "length, or raise model.rope_max_seq_len (positions past the trained ones are extrapolation)"
            )
        return num_latent_frames

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text embeddings ``(1, L_text, text_dim)`` of one prompt, on the model's device.

        Raises:
            ValueError: If the text encoder refuses the prompt (e.g. a word outside the world's
                vocabulary) or its width is not the model's ``text_dim``.
        """
        embeddings = self.text_encoder([prompt])[0]  # (1, L_text, D)
        text_dim = self.model.config.text_dim
        if embeddings.shape[-1] != text_dim:
            raise ValueError(
                f"the text encoder gives {embeddings.shape[-1]}-channel embeddings but the model takes "
                f"text_dim={text_dim}; use the text encoder the student was trained with"
            )
        return embeddings.to(device=self.device, dtype=self.dtype)

    def plan(
        self, prompt: str, length: int | str, switches: Sequence[str] = (), prefix: VideoPrefix | None = None
    ) -> GenerationPlan:
        """Check a request and encode its prompts, before any frame is generated.

        Args:
            prompt: The prompt of the start of the video.
            length: Latent frames (``200``) or seconds (``"60s"``, rounded down to whole chunks) to
                generate (after the given frames, if any).
            switches: ``"<time>:<prompt>"`` prompt switches (see :mod:`sfpp.inference.prompt_schedule`),
                timed from the first generated frame.
            prefix: Given frames to continue (:func:`sfpp.inference.prefix.encode_prefix`).

        Raises:
            ValueError: For an empty prompt, an unreadable or too long length (naming the maximum
                in seconds and latent frames), a bad switch, or a prompt the text encoder refuses.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        given = 0 if prefix is None else prefix.written_latent_frames
        num_latent_frames = self.check_length(length, start=given)
        segments = plan_segments(prompt.strip(), list(switches), num_latent_frames, self.timing)
        contexts = tuple(self.encode_prompt(segment.prompt) for segment in segments)
        return GenerationPlan(
            length=length,
            num_latent_frames=num_latent_frames,
            num_frames=self.timing.frames_from_latent_frames(given + num_latent_frames),
            segments=tuple(segments),
            contexts=contexts,
            prefix=prefix,
        )

    # -- generation ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        length: int | str,
        out_path: str | Path,
        seed: int = 0,
        switches: Sequence[str] = (),
        on_chunk: Callable[[ChunkInfo], None] | None = None,
    ) -> GenerationResult:
        """:meth:`plan` then :meth:`run`."""
        return self.run(self.plan(prompt, length, switches), out_path, seed, on_chunk)

    def run(
        self,
        plan: GenerationPlan,
        out_path: str | Path,
        seed: int = 0,
        on_chunk: Callable[[ChunkInfo], None] | None = None,
        description: str = "generating",
    ) -> GenerationResult:
        """Stream a planned video into ``out_path`` (an mp4) and write the JSON beside it.

        Args:
            plan: From :meth:`plan`.
            out_path: The ``.mp4`` to write (parent directories are created).
            seed: Seed of every random draw.
            on_chunk: Called after every chunk is written (progress hooks, tests).
            description: Label of the progress bar.

        Returns:
            The paths and the JSON's content.

        Raises:
            BaseException: Whatever interrupts the generation (``KeyboardInterrupt`` included), after
                the mp4 is finalised and the JSON written with ``"completed": false``.
        """
        video_path = Path(out_path)
        json_path = video_path.with_suffix(".json")
        cache = self.new_cache()
        record = FrameRecord(plan.num_frames, self.max_metric_frames, self.metric_max_side)
        generator = torch.Generator().manual_seed(seed)
        writer = StreamingVideoWriter(video_path, fps=self.fps, upscale=self.upscale)
        started = time.perf_counter()
        try:
            self._stream(plan, cache, record, writer, generator, on_chunk, description)
        except BaseException as error:  # KeyboardInterrupt too: say in the JSON what the mp4 holds
            seconds = time.perf_counter() - started
            summary = self._summary(plan, seed, video_path, writer.num_frames, seconds, cache, record, error)
            json_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
            log.warning(
                "generation interrupted after %d of %d frames (%r); %s holds them",
                writer.num_frames,
                plan.num_frames,
                error,
                video_path,
            )
            raise
        finally:
            writer.close()  # finalises the mp4, whatever happened
        seconds = time.perf_counter() - started
        summary = self._summary(plan, seed, video_path, writer.num_frames, seconds, cache, record, None)
        json_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return GenerationResult(video_path, json_path, summary)

    def new_cache(self) -> RollingKVCache:
        """A rolling KV cache for one video of this generator's frame size."""
        return self.model.new_kv_cache(
            1, *self.latent_shape[1:], window_frames=self.cache_window_frames, sink_frames=self.sink_frames
        )

    @torch.no_grad()  # around each step of the generator, not while the caller holds it
    def stream_chunks(
        self,
        num_latent_frames: int,
        prompt_at: Callable[[int], tuple[str, torch.Tensor]],
        cache: RollingKVCache,
        generator: torch.Generator,
        prefix: VideoPrefix | None = None,
    ) -> Iterator[tuple[RolloutChunk, torch.Tensor, str]]:
        """Generate and decode a video chunk by chunk, asking for the prompt at every chunk boundary.

        This is the one generation loop: :meth:`run` feeds it the planned prompt segments, and an
        interactive stream (``python -m sfpp.serve``) a prompt that the user may switch at any time.
        When the prompt of a chunk differs from the previous chunk's, the cached text keys and
        values are dropped, so the chunk recomputes the cross-attention K/V from the new prompt
        while the self-attention cache (the past frames) stays: the switch takes effect at that
        chunk boundary.

        Args:
            num_latent_frames: Latent frames to generate (whole chunks).
            prompt_at: ``prompt_at(first_latent_frame) -> (prompt, context (1, L_text, D))`` of a chunk.
            cache: The video's rolling cache (:meth:`new_cache`), empty.
            generator: Source of every random draw.
            prefix: Given frames, written into the cache as finished chunks first (under the
                prompt of the first generated frame) and yielded like generated chunks; the
                generated frames continue them. A prefix ``in_first_chunk`` is held clean at
                timestep 0 inside the first generated chunk instead (Wan2.2-TI2V's conditioning).

        Yields:
            ``(chunk, frames (3, f, H, W), prompt)`` per chunk, in order.
        """
        decoder = self.codec.stream_decoder()
        chunk_frames = self.model.config.num_frames_per_chunk
        current: str | None = None
        first_frames = None
        if prefix is not None and prefix.in_first_chunk:
            first_frames = prefix.latents.to(self.device)
        elif prefix is not None:
            current, context = prompt_at(0)
            cache.reset_cross_attention()
            for chunk in write_prefix(self.model, context, cache, prefix.latents, self.sampler, generator):
                yield chunk, decoder.decode_chunk(chunk.latents)[0], current
        for start in range(0, num_latent_frames, chunk_frames):
            prompt, context = prompt_at(start)
            if prompt != current:
                cache.reset_cross_attention()  # this chunk recomputes the text K/V from the prompt
                current = prompt
            given, first_frames = first_frames, None
            for chunk in stream_rollout(
                self.model,
                context,
                cache,
                chunk_frames,
                self.latent_shape,
                self.sampler,
                generator,
                first_frames=given,
            ):
                yield chunk, decoder.decode_chunk(chunk.latents)[0], prompt  # frames (3, f, H, W)

    def _stream(
        self,
        plan: GenerationPlan,
        cache: RollingKVCache,
        record: FrameRecord,
        writer: StreamingVideoWriter,
        generator: torch.Generator,
        on_chunk: Callable[[ChunkInfo], None] | None,
        description: str,
    ) -> None:
        """Generate the planned chunks, decode them and hand the frames to the writer and the record."""
        started = time.perf_counter()
        report = ProgressReport(description, plan.num_frames, "frames", enabled=self.show_progress)
        chunks = self.stream_chunks(plan.num_latent_frames, plan.prompt_at, cache, generator, plan.prefix)
        with report:
            for chunk_index, (chunk, frames, prompt) in enumerate(chunks):
                writer.write(frames)
                record.add(frames)
                fps = writer.num_frames / max(time.perf_counter() - started, 1e-9)
                report.update(writer.num_frames, frames_per_s=fps)
                if on_chunk is not None:
                    on_chunk(ChunkInfo(chunk_index, chunk, frames, prompt, writer.num_frames, cache, record))

    # -- the JSON -----------------------------------------------------------------------------------

    def _summary(
        self,
        plan: GenerationPlan,
        seed: int,
        video_path: Path,
        num_frames_written: int,
        seconds: float,
        cache: RollingKVCache,
        record: FrameRecord,
        error: BaseException | None,
    ) -> dict[str, Any]:
        """The JSON written beside the video (metrics only for a completed video)."""
        given = plan.prefix_latent_frames  # the segments count from the first generated frame
        summary: dict[str, Any] = {
            "video": video_path.name,
            "completed": error is None,
            "prompt": plan.prompt,
            "prompts": [
                {
                    "prompt": segment.prompt,
                    "start_latent_frame": given + segment.start_frame,
                    "start_frame": first_frame_of_latent(given + segment.start_frame, self.timing),
                    "start_seconds": first_frame_of_latent(given + segment.start_frame, self.timing)
                    / self.fps,
                }
                for segment in plan.segments
            ],
            "seed": seed,
            "length": plan.length,
            "latent_frames": plan.num_latent_frames,
            "frames": plan.num_frames,
            "frames_written": num_frames_written,
            "duration_seconds": (plan.num_frames - 1) / self.fps,
            "video_fps": self.fps,
            "seconds_taken": seconds,
            "generation_frames_per_second": num_frames_written / seconds if seconds > 0 else 0.0,
            "checkpoint": self.checkpoint,
            "device": str(self.device),
            "cache_window_frames": self.cache_window_frames,
            "sink_frames": self.sink_frames,
            "kv_cache_bytes": cache.nbytes,
            "sampler_timesteps": list(self.sampler.timesteps),
        }
        if plan.prefix is not None:
            summary["prefix"] = plan.prefix.describe() | {
                "frames": self.timing.frames_from_latent_frames(plan.prefix.num_latent_frames),
            }
        if error is not None:
            summary["error"] = repr(error)
            return summary
        began = time.perf_counter()
        segments = [  # (prompt, first frame, one past the last frame) in decoded frames
            (
                segment.prompt,
                first_frame_of_latent(given + segment.start_frame, self.timing) if index or not given else 0,
                first_frame_of_latent(given + segment.end_frame, self.timing),
            )
            for index, segment in enumerate(plan.segments)
        ]
        if record.enabled and self.metrics:
            means, per_segment, skipped = evaluate_segments(self.metrics, segments, record.video)
        else:
            means, per_segment, skipped = {}, [], {}
        summary.update(
            metrics=means,
            metrics_skipped=skipped,
            metric_frames=record.num_kept,
            metric_frame_stride=record.stride,
            metric_seconds=time.perf_counter() - began,
        )
        if len(plan.segments) > 1:
            summary["segment_metrics"] = [vars(scores) for scores in per_segment]
        return summary
