"""Interactive streaming: a local web page that shows a student's video as it is generated.

The server (`Starlette <https://www.starlette.io>`_ on `uvicorn <https://www.uvicorn.org>`_:
Starlette is the small, well-kept ASGI toolkit FastAPI is built on; this app needs WebSockets, one
page and two JSON routes, not request models) serves

* ``/``: the page (a video canvas, a prompt box with the world's prompts as suggestions, start,
  stop and switch, fps / latency / stability readouts);
* ``/api/info``: whether the student loaded (or why not), the vocabulary, the suggestions, limits;
* ``/ws``: one WebSocket per client. The client sends JSON commands, ``{"type": "start", "prompt",
  "seed", "length", "pace", "save", "start_from"}``, ``{"type": "switch", "prompt"}`` and
  ``{"type": "stop"}``; ``start_from`` (optional) continues given frames instead of starting from
  noise: ``{"clip": name}`` (one of the server's clips, e.g. the built-in world's held-out ones) or
  ``{"image": "data:image/png;base64,...", "name": file name}`` (an uploaded image, checked for
  size, format and frame size);
  the server answers with binary frame messages (a 12-byte header ``frame index, chunk index,
  PNG length`` as little-endian uint32, then a PNG) and JSON messages (``started``, ``stats``,
  ``switched``, ``done``, ``error``);
* ``/videos/<name>``: the mp4 and JSON of a stream saved with ``"save": true``.

Every stream goes through :meth:`sfpp.inference.VideoGenerator.stream_chunks`, the loop that
``python -m sfpp.generate`` uses: a switch takes effect at the next chunk boundary exactly as a
planned ``switch=`` does. Generation runs in a worker thread and hands frames to the client through
a bounded queue: a client that reads slowly slows the generation down instead of growing memory.
One generation per client; the number of clients and the length of a stream are limited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sfpp.apps.stream_start import prefix_from
from sfpp.inference.generator import VideoGenerator
from sfpp.inference.prefix import VideoPrefix
from sfpp.io.video import StreamingVideoWriter, to_uint8_frames
from sfpp.metrics.frame_stats import motion_magnitudes
from sfpp.metrics.stability import stability_scores

__all__ = ["FRAME_HEADER", "LiveStream", "StreamLimits", "build_app", "encode_frame", "decode_frame_message"]

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "stream.html"
#: Header of a binary frame message: frame index, chunk index, PNG length (little-endian uint32).
FRAME_HEADER = struct.Struct("<III")
PACES = ("realtime", "fast")


@dataclass(frozen=True)
class StreamLimits:
    """What one server allows.

    Args:
        max_clients: WebSocket clients at once; one more is told so and disconnected.
        max_length: Longest stream in latent frames (the model's RoPE table is the other limit).
        queue_frames: Frames waiting for a client at most; generation pauses while the queue is full.
        stats_every_frames: Frames between two ``stats`` messages (stability and motion of the
            last ``window_frames`` frames against the first ones).
        window_frames: Frames per window of the live stability readout.
        max_upload_bytes: Largest uploaded image to start from.
    """

    max_clients: int = 4
    max_length: int = 1024
    queue_frames: int = 32
    stats_every_frames: int = 8
    window_frames: int = 8
    max_upload_bytes: int = 2_000_000

    def __post_init__(self) -> None:
        for name in ("max_clients", "max_length", "queue_frames", "stats_every_frames", "window_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def encode_frame(frame: torch.Tensor, index: int, chunk: int, upscale: int = 1) -> bytes:
    """A binary frame message: :data:`FRAME_HEADER` then the frame ``(3, H, W)`` in ``[-1, 1]`` as PNG."""
    rgb = to_uint8_frames(frame[:, None], upscale)[0]  # (3, 1, H, W) -> (H', W', 3) uint8
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV refuses only impossible images
        raise RuntimeError("could not encode a frame as PNG")
    payload = png.tobytes()
    return FRAME_HEADER.pack(index, chunk, len(payload)) + payload


def decode_frame_message(message: bytes) -> tuple[int, int, np.ndarray]:
    """Frame index, chunk index and the RGB ``uint8`` image ``(H, W, 3)`` of a binary frame message."""
    index, chunk, size = FRAME_HEADER.unpack_from(message)
    png = np.frombuffer(message, dtype=np.uint8, offset=FRAME_HEADER.size, count=size)
    image = cv2.imdecode(png, cv2.IMREAD_COLOR)
    return index, chunk, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class LiveStream:
    """One client's generation: a prompt that can be switched while chunks are being generated.

    Args:
        generator: The loaded student.
        prompt: The first prompt (checked by encoding it).
        num_latent_frames: Latent frames to generate (whole chunks).
        seed: Seed of every random draw; the same seed and switches give the same frames.
        save_path: Where to write the streamed frames as an mp4 (a JSON beside it), or ``None``.
        prefix: Given frames to continue: written into the cache and streamed first.

    Raises:
        ValueError: For a prompt the text encoder refuses.
    """

    def __init__(
        self,
        generator: VideoGenerator,
        prompt: str,
        num_latent_frames: int,
        seed: int = 0,
        save_path: Path | None = None,
        prefix: VideoPrefix | None = None,
    ) -> None:
        self.generator = generator
        self.prefix = prefix
        self.num_latent_frames = num_latent_frames
        self.seed = seed
        self.save_path = save_path
        self._lock = threading.Lock()
        self._prompt, self._context = prompt, generator.encode_prompt(prompt)
        self.stopped = threading.Event()
        #: ``(first latent frame, prompt)`` of every prompt the stream used, in order.
        self.segments: list[tuple[int, str]] = []

    def switch(self, prompt: str) -> None:
        """Use ``prompt`` from the next chunk boundary on.

        Raises:
            ValueError: For a prompt the text encoder refuses (the stream keeps its prompt).
        """
        context = self.generator.encode_prompt(prompt)
        with self._lock:
            self._prompt, self._context = prompt, context

    def _prompt_at(self, latent_frame: int) -> tuple[str, torch.Tensor]:
        with self._lock:
            prompt, context = self._prompt, self._context
        if not self.segments or self.segments[-1][1] != prompt:
            self.segments.append((latent_frame, prompt))
        return prompt, context

    def frames(self) -> Any:
        """Generate: yields ``(chunk index, frames (3, f, H, W), prompt, first latent frame)`` until done or stopped."""
        cache = self.generator.new_cache()
        torch_generator = torch.Generator().manual_seed(self.seed)
        chunks = self.generator.stream_chunks(
            self.num_latent_frames, self._prompt_at, cache, torch_generator, self.prefix
        )
        for index, (chunk, frames, prompt) in enumerate(chunks):
            if self.stopped.is_set():
                return
            yield index, frames, prompt, chunk.frame_offset


class _PageStream:
    """The state of one connected client: at most one stream, its queue and its worker thread."""

    def __init__(self, state: _ServerState, send: Callable[[Any], Any]) -> None:
        self.state = state
        self.send = send
        self.stream: LiveStream | None = None
        self.worker: threading.Thread | None = None
        self.queue: asyncio.Queue | None = None
        self.sender: asyncio.Task | None = None
        self.max_queued = 0

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    async def start(self, message: dict[str, Any]) -> None:
        if self.running or (self.sender is not None and not self.sender.done()):
            raise ValueError("a stream is already running for this page; stop it first")
        generator = self.state.require_generator()
        prompt = str(message.get("prompt") or "").strip()
        if not prompt:
            raise ValueError("type a prompt first")
        pace = message.get("pace", "realtime")
        if pace not in PACES:
            raise ValueError(f"pace must be one of {list(PACES)}, got {pace!r}")
        try:
            seed = int(message.get("seed", 0))
        except (TypeError, ValueError):
            raise ValueError(f"seed must be an integer, got {message.get('seed')!r}") from None
        num_latent_frames = self.state.check_length(message.get("length", self.state.default_length))
        prefix = self.state.prefix(message.get("start_from"), num_latent_frames)
        save_path = self.state.new_save_path() if message.get("save") else None
        self.stream = LiveStream(generator, prompt, num_latent_frames, seed, save_path, prefix)
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue(maxsize=self.state.limits.queue_frames)
        self.worker = threading.Thread(
            target=self._generate, args=(loop, self.stream, self.queue), daemon=True
        )
        await self.send(
            {
                "type": "started",
                "prompt": prompt,
                "seed": seed,
                "latent_frames": num_latent_frames,
                "fps": generator.fps,
                "pace": pace,
                "start_from": None if prefix is None else prefix.describe(),
            }
        )
        self.sender = asyncio.create_task(self._send_frames(self.queue, pace, generator.fps, prompt))
        self.worker.start()

    def switch(self, message: dict[str, Any]) -> None:
        if self.stream is None or not self.running:
            raise ValueError("no stream is running; start one first")
        prompt = str(message.get("prompt") or "").strip()
        if not prompt:
            raise ValueError("type the prompt to switch to")
        self.stream.switch(prompt)

    async def stop(self) -> None:
        """Stop the running stream (if any) and wait until its sender has finished."""
        if self.stream is not None:
            self.stream.stopped.set()
        if self.sender is not None:
            try:
                await self.sender
            except Exception:  # a client that went away while frames were being sent
                log.info("a stream ended with its client gone")

    def _generate(self, loop: asyncio.AbstractEventLoop, stream: LiveStream, queue: asyncio.Queue) -> None:
        """Worker thread: generate, put each frame in the queue (waiting while it is full)."""

        def put(item: Any, until_stopped: bool = True) -> bool:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            if not until_stopped:
                future.result()  # the sender drains the queue even after a stop
                return True
            while not stream.stopped.is_set():
                try:
                    future.result(timeout=0.1)
                    return True
                except TimeoutError:
                    continue
            future.cancel()
            return False

        writer = (
            StreamingVideoWriter(stream.save_path, fps=stream.generator.fps, upscale=stream.generator.upscale)
            if stream.save_path
            else None
        )
        frame_index = 0
        error: str | None = None
        started = time.perf_counter()
        try:
            for chunk_index, frames, prompt, latent_frame in stream.frames():
                if writer is not None:
                    writer.write(frames)
                elapsed = time.perf_counter() - started
                for frame in frames.unbind(1):  # (3, f, H, W) -> f x (3, H, W)
                    if not put(("frame", frame_index, chunk_index, frame, prompt, latent_frame, elapsed)):
                        return
                    frame_index += 1
        except Exception as exc:  # the page shows it; the server keeps serving
            log.exception("stream failed")
            error = f"generation failed: {exc}"
        finally:
            if writer is not None:
                writer.close()
                self._write_json(stream, frame_index, error)
            put(("end", error, frame_index), until_stopped=False)

    def _write_json(self, stream: LiveStream, num_frames: int, error: str | None) -> None:
        generator = stream.generator
        summary = {
            "video": stream.save_path.name,
            "completed": error is None and not stream.stopped.is_set(),
            "seed": stream.seed,
            "latent_frames_requested": stream.num_latent_frames,
            "frames_written": num_frames,
            "video_fps": generator.fps,
            "prompts": [{"prompt": p, "start_latent_frame": f} for f, p in stream.segments],
            "checkpoint": generator.checkpoint,
            "error": error,
        }
        if stream.prefix is not None:
            summary["prefix"] = stream.prefix.describe()
        stream.save_path.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")

    async def _send_frames(self, queue: asyncio.Queue, pace: str, fps: float, current_prompt: str) -> None:
        """Send queued frames (paced at the video's fps with ``realtime``) and the live numbers."""
        limits = self.state.limits
        upscale = self.stream.generator.upscale
        first: list[torch.Tensor] = []
        recent: list[torch.Tensor] = []
        started = time.perf_counter()
        first_frame_at: float | None = None
        while True:
            self.max_queued = max(self.max_queued, queue.qsize())
            item = await queue.get()
            if item[0] == "end":
                _, error, count = item
                if error:
                    await self.send({"type": "error", "message": error})
                done = {"type": "done", "frames": count, "stopped": self.stream.stopped.is_set()}
                if self.stream.save_path is not None:
                    done["video"] = f"/videos/{self.stream.save_path.name}"
                await self.send(done)
                return
            _, index, chunk, frame, prompt, latent_frame, generated_after = item
            if self.stream.stopped.is_set():
                continue  # drop what was generated before the stop
            if pace == "realtime" and first_frame_at is not None:
                delay = first_frame_at + index / fps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if first_frame_at is None:
                first_frame_at = time.perf_counter()
                await self.send({"type": "stats", "first_frame_latency_s": first_frame_at - started})
            if prompt != current_prompt:
                current_prompt = prompt
                await self.send(
                    {"type": "switched", "prompt": prompt, "frame": index, "latent_frame": latent_frame}
                )
            await self.send(encode_frame(frame, index, chunk, upscale))
            (first if len(first) < limits.window_frames else recent).append(frame)
            recent[:] = recent[-limits.window_frames :]
            if (index + 1) % limits.stats_every_frames == 0:
                await self.send(self._stats(index, chunk, generated_after, first, recent))

    def _stats(
        self,
        index: int,
        chunk: int,
        generated_after: float,
        first: Sequence[torch.Tensor],
        recent: Sequence[torch.Tensor],
    ) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "type": "stats",
            "frame": index,
            "chunk": chunk,
            "generated_fps": (index + 1) / max(generated_after, 1e-9),
        }
        window = self.state.limits.window_frames
        if len(first) == window and len(recent) == window:
            video = torch.stack([*first, *recent], dim=1)  # (3, 2 * window, H, W)
            stats["stability"] = stability_scores(video, window_frames=window)["score"]
            stats["motion_px_per_frame"] = float(
                np.mean(motion_magnitudes(torch.stack(list(recent), dim=1).numpy()))
            )
        return stats


class _ServerState:
    """What the app shares between clients: the generator (or why it failed), limits, counters."""

    def __init__(
        self,
        load_generator: Callable[[], VideoGenerator],
        limits: StreamLimits,
        save_dir: Path,
        default_length: int | str,
        vocabulary: Sequence[str],
        suggestions: Sequence[str],
        clips: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.limits = limits
        self.clips = dict(clips or {})
        self.save_dir = Path(save_dir)
        self.default_length = default_length
        self.vocabulary = list(vocabulary)
        self.suggestions = list(suggestions)
        self.clients = 0
        self.pages: list[_PageStream] = []
        self._saved = 0
        self.generator: VideoGenerator | None = None
        self.load_error: str | None = None
        try:
            self.generator = load_generator()
        except Exception as error:  # shown on the page; the server still starts
            self.load_error = f"the student could not be loaded: {error}"
            log.error(self.load_error)
        if not self.vocabulary and self.generator is not None:
            self.vocabulary = list(getattr(self.generator.text_encoder, "vocabulary", ()))

    def require_generator(self) -> VideoGenerator:
        if self.generator is None:
            raise ValueError(self.load_error or "no student loaded")
        return self.generator

    def check_length(self, length: Any) -> int:
        """Latent frames of ``length``: the generator's check (format, RoPE table), then this server's limit."""
        generator = self.require_generator()
        try:
            num_latent_frames = generator.check_length(length)
        except (TypeError, ValueError) as error:
            raise ValueError(f"length={length!r}: {error}") from None
        if num_latent_frames > self.limits.max_length:
            seconds = generator.timing.seconds_from_latent_frames(self.limits.max_length)
            raise ValueError(
                f"length={length!r} is {num_latent_frames} latent frames; this server streams at most "
                f"{self.limits.max_length} latent frames ({seconds:.1f} s): ask for less or raise max_length"
            )
        return num_latent_frames

    def prefix(self, start_from: Any, num_latent_frames: int) -> VideoPrefix | None:
        """The given frames of a start command's ``start_from`` (:func:`~sfpp.apps.stream_start.prefix_from`)."""
        if start_from in (None, "", {}):
            return None
        return prefix_from(
            start_from, self.require_generator(), self.clips, num_latent_frames, self.limits.max_upload_bytes
        )

    def new_save_path(self) -> Path:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self._saved += 1
        return self.save_dir / f"stream_{time.strftime('%Y%m%d_%H%M%S')}_{self._saved:03d}.mp4"

    def info(self) -> dict[str, Any]:
        generator = self.generator
        return {
            "ready": generator is not None,
            "error": self.load_error,
            "vocabulary": self.vocabulary,
            "suggestions": self.suggestions,
            "max_clients": self.limits.max_clients,
            "max_length": None
            if generator is None
            else min(self.limits.max_length, generator.max_latent_frames),
            "default_length": self.default_length,
            "fps": None if generator is None else generator.fps,
            "frame_size": None if generator is None else list(generator.frame_size),
            "upscale": None if generator is None else generator.upscale,
            "checkpoint": None if generator is None else generator.checkpoint,
            "clips": list(self.clips),
            "max_upload_bytes": self.limits.max_upload_bytes,
        }


def build_app(
    load_generator: Callable[[], VideoGenerator],
    limits: StreamLimits | None = None,
    save_dir: str | Path = "artifacts/serve",
    default_length: int | str = "30s",
    vocabulary: Sequence[str] = (),
    suggestions: Sequence[str] = (),
    clips: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    """The Starlette app of the streaming page.

    Args:
        load_generator: Builds the student's :class:`~sfpp.inference.VideoGenerator`; an error is
            shown on the page instead of stopping the server.
        limits: Clients, length and queue limits.
        save_dir: Where saved streams go.
        default_length: Length of a stream when the page does not say.
        vocabulary: Words the text encoder knows (shown as a hint; default: the text encoder's
            ``vocabulary`` when it has one).
        suggestions: Prompts offered in the prompt box.
        clips: Clips a stream can start from, ``{name: frames (3, F, H, W) in [-1, 1]}`` at the
            student's frame size (their frames are given, the student continues them).

    Returns:
        An ASGI app (serve it with ``uvicorn.run(app, host=..., port=...)``).
    """
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    state = _ServerState(
        load_generator,
        limits or StreamLimits(),
        Path(save_dir),
        default_length,
        vocabulary,
        suggestions,
        clips,
    )

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    async def info(request: Any) -> JSONResponse:
        return JSONResponse(state.info())

    async def video(request: Any) -> Response:
        name = request.path_params["name"]
        path = (state.save_dir / name).resolve()
        if (
            path.parent != state.save_dir.resolve()
            or path.suffix not in (".mp4", ".json")
            or not path.is_file()
        ):
            return JSONResponse({"error": f"no saved stream {name!r}"}, status_code=404)
        return FileResponse(path)

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if state.clients >= state.limits.max_clients:
            await websocket.send_json(
                {
                    "type": "error",
                    "message": f"this server takes {state.limits.max_clients} clients at most; try again later",
                }
            )
            await websocket.close(code=1013)
            return
        state.clients += 1
        lock = asyncio.Lock()

        async def send(message: Any) -> None:
            async with lock:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_json(message)

        client = _PageStream(state, send)
        state.pages.append(client)
        try:
            await send({"type": "hello", **state.info()})
            while True:
                text = await websocket.receive_text()
                try:
                    message = json.loads(text)
                    if not isinstance(message, dict):
                        raise ValueError("a command is a JSON object")
                    kind = message.get("type")
                    if kind == "start":
                        await client.start(message)
                    elif kind == "switch":
                        client.switch(message)
                    elif kind == "stop":
                        await client.stop()
                    else:
                        raise ValueError(f"unknown command {kind!r}; send start, switch or stop")
                except (ValueError, json.JSONDecodeError) as error:
                    await send({"type": "error", "message": str(error)})
        except WebSocketDisconnect:
            pass
        finally:
            if client.stream is not None:
                await client.stop()
            state.clients -= 1
            state.pages.remove(client)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/info", info),
            Route("/videos/{name}", video),
            WebSocketRoute("/ws", stream),
        ]
    )
    app.state.stream_state = state
    return app
