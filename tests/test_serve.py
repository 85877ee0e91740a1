"""The interactive streaming page: its endpoints, switches at chunk boundaries, errors, bounded memory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from starlette.testclient import TestClient

from sfpp.apps.streaming import StreamLimits, build_app, decode_frame_message, encode_frame
from sfpp.codecs import PixelCodec
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.inference import VideoGenerator
from sfpp.models import build_model
from sfpp.serve import make_app
from sfpp.utils.config_dir import find_config_dir
from sfpp.world import WorldTextEncoder

PROMPT = "a red circle bouncing on a dark background"
OTHER = "a blue square bouncing on a dark background"
CHUNK_FRAMES = 2  # latent (= pixel) frames per chunk of the tiny student


def _generator() -> VideoGenerator:
    torch.manual_seed(0)
    model = build_model(
        "tiny",
        causal=True,
        num_frames_per_chunk=CHUNK_FRAMES,
        attention_backend="sdpa",
        in_channels=3,
        out_channels=3,
        text_dim=64,
        prediction_type="x0",
        rope_max_seq_len=64,
    )
    return VideoGenerator(
        model=model,
        text_encoder=WorldTextEncoder(embed_dim=64, max_length=16),
        codec=PixelCodec(),
        sampler=FewStepSampler.from_steps([1000, 500], shift=5.0),
        frame_size=(16, 16),
        cache_window_frames=4,
        fps=8.0,
        device="cpu",
        show_progress=False,
    )


@pytest.fixture(scope="module")
def generator() -> VideoGenerator:
    return _generator()


def _client(generator: VideoGenerator, tmp_path: Path, **limits) -> TestClient:
    app = build_app(
        lambda: generator,
        limits=StreamLimits(**{"queue_frames": 4, "stats_every_frames": 4, "window_frames": 2, **limits}),
        save_dir=tmp_path / "saved",
        default_length=16,
        suggestions=[PROMPT, OTHER],
    )
    return TestClient(app)


def _receive_until_done(ws, on_frame=None, max_messages: int = 10_000) -> tuple[list, list]:
    """All messages of a stream up to its ``done``: decoded frames and JSON messages."""
    frames, events = [], []
    for _ in range(max_messages):
        message = ws.receive()
        if message.get("bytes") is not None:
            frames.append(decode_frame_message(message["bytes"]))
            if on_frame is not None:
                on_frame(len(frames), ws)
            continue
        event = json.loads(message["text"])
        events.append(event)
        if event["type"] == "done":
            return frames, events
    raise AssertionError("the stream did not end")


def _hello(ws) -> dict:
    hello = ws.receive_json()
    assert hello["type"] == "hello"
    return hello


def test_page_and_info(generator, tmp_path) -> None:
    client = _client(generator, tmp_path)
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "Switch prompt" in page.text
    info = client.get("/api/info").json()
    assert info["ready"] and info["error"] is None
    assert info["suggestions"] == [PROMPT, OTHER]
    assert "circle" in info["vocabulary"] and info["fps"] == 8.0
    assert info["max_length"] == 64  # the tiny model's RoPE table, under the configured 1024


def test_frames_arrive_in_order_and_equal_the_file_writer(generator, tmp_path) -> None:
    client = _client(generator, tmp_path)
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json({"type": "start", "prompt": PROMPT, "seed": 3, "length": 8, "pace": "fast"})
        frames, events = _receive_until_done(ws)
    assert [index for index, _, _ in frames] == list(range(8))
    assert [chunk for _, chunk, _ in frames] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert events[0]["type"] == "started" and events[-1] == {"type": "done", "frames": 8, "stopped": False}
    stats = [e for e in events if e["type"] == "stats"]
    assert "first_frame_latency_s" in stats[0] and any("stability" in e for e in stats)
    # The same frames as the file writer (python -m sfpp.generate) with the same seed.
    result = generator.generate(PROMPT, 8, tmp_path / "file.mp4", seed=3)
    assert result.summary["frames_written"] == 8
    chunks: list[torch.Tensor] = []
    generator.run(
        generator.plan(PROMPT, 8), tmp_path / "again.mp4", seed=3, on_chunk=lambda i: chunks.append(i.frames)
    )
    expected = torch.cat(chunks, dim=1)  # (3, 8, H, W)
    for index, _, image in frames:
        reference = decode_frame_message(encode_frame(expected[:, index], index, 0))[2]
        assert np.array_equal(image, reference)


def test_switch_takes_effect_at_a_chunk_boundary_and_keeps_the_past(generator, tmp_path) -> None:
    client = _client(generator, tmp_path)

    def run(switch_after: int | None) -> tuple[list, list]:
        def on_frame(count: int, ws) -> None:
            if count == switch_after:
                ws.send_json({"type": "switch", "prompt": OTHER})

        with client.websocket_connect("/ws") as ws:
            _hello(ws)
            # pace "realtime" at 8 fps: the switch arrives while later chunks are still to come
            ws.send_json({"type": "start", "prompt": PROMPT, "seed": 1, "length": 24, "pace": "realtime"})
            return _receive_until_done(ws, on_frame)

    plain, _ = run(None)
    switched, events = run(3)
    (switch,) = [e for e in events if e["type"] == "switched"]
    boundary = switch["frame"]
    assert boundary % CHUNK_FRAMES == 0 and switch["latent_frame"] == boundary and switch["prompt"] == OTHER
    assert 4 <= boundary < 24
    for (i, _, a), (j, _, b) in zip(plain[:boundary], switched[:boundary], strict=True):
        assert i == j and np.array_equal(a, b)  # frames before the switch are the unswitched stream's
    assert any(
        not np.array_equal(a, b)
        for (_, _, a), (_, _, b) in zip(plain[boundary:], switched[boundary:], strict=True)
    )
    # The switch is the planned switch of python -m sfpp.generate at that frame: the same frames.
    chunks: list[torch.Tensor] = []
    plan = generator.plan(PROMPT, 24, [f"{boundary}:{OTHER}"])
    generator.run(plan, tmp_path / "planned.mp4", seed=1, on_chunk=lambda info: chunks.append(info.frames))
    expected = torch.cat(chunks, dim=1)
    for index, _, image in switched:
        assert np.array_equal(image, decode_frame_message(encode_frame(expected[:, index], index, 0))[2])


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ({"type": "start", "prompt": "a purple circle bouncing on a dark background"}, "purple"),
        ({"type": "start", "prompt": PROMPT, "length": 4000}, "at most 64 latent frames"),
        ({"type": "start", "prompt": PROMPT, "length": "forever"}, "length='forever'"),
        ({"type": "start", "prompt": PROMPT, "pace": "warp"}, "pace must be one of"),
        ({"type": "start", "prompt": ""}, "type a prompt"),
        ({"type": "switch", "prompt": OTHER}, "no stream is running"),
        ({"type": "dance"}, "unknown command"),
    ],
)
def test_bad_input_answers_with_an_error_and_the_server_keeps_serving(
    generator, tmp_path, command, message
) -> None:
    client = _client(generator, tmp_path)
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json(command)
        error = ws.receive_json()
        assert error["type"] == "error" and message in error["message"]
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 2, "pace": "fast"})
        frames, events = _receive_until_done(ws)
        assert len(frames) == 2 and events[-1]["type"] == "done"


def test_not_json_and_unknown_switch_words(generator, tmp_path) -> None:
    client = _client(generator, tmp_path)
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_text("start please")
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 16, "pace": "realtime"})
        assert ws.receive_json()["type"] == "started"
        ws.send_json({"type": "switch", "prompt": "a red blob bouncing on a dark background"})
        ws.send_json({"type": "start", "prompt": PROMPT})
        frames, events = _receive_until_done(ws)
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert any("blob" in e for e in errors) and any("already running" in e for e in errors)
    assert len(frames) == 16 and not [e for e in events if e["type"] == "switched"]


def test_more_clients_than_configured_are_refused(generator, tmp_path) -> None:
    client = _client(generator, tmp_path, max_clients=1)
    with client.websocket_connect("/ws") as first:
        _hello(first)
        with client.websocket_connect("/ws") as second:
            refused = second.receive_json()
            assert refused["type"] == "error" and "1 clients at most" in refused["message"]
        first.send_json({"type": "start", "prompt": PROMPT, "length": 2, "pace": "fast"})
        assert len(_receive_until_done(first)[0]) == 2


def test_a_checkpoint_that_does_not_load_is_shown_not_fatal(tmp_path) -> None:
    def broken() -> VideoGenerator:
        raise FileNotFoundError("checkpoint=/nowhere/last.ckpt does not exist")

    client = TestClient(build_app(broken, save_dir=tmp_path))
    info = client.get("/api/info").json()
    assert not info["ready"] and "/nowhere/last.ckpt" in info["error"]
    with client.websocket_connect("/ws") as ws:
        assert not _hello(ws)["ready"]
        ws.send_json({"type": "start", "prompt": PROMPT})
        assert "could not be loaded" in ws.receive_json()["message"]
    assert client.get("/").status_code == 200


def test_a_slow_client_keeps_the_queue_bounded(generator, tmp_path) -> None:
    client = _client(generator, tmp_path, queue_frames=3)
    state = client.app.state.stream_state

    def slow(count: int, ws) -> None:
        time.sleep(0.02)

    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 32, "pace": "fast"})
        frames, _ = _receive_until_done(ws, slow)
        (page,) = state.pages
        assert page.max_queued <= 3
    assert len(frames) == 32


def test_stop_ends_the_stream_early_and_save_writes_mp4_and_json(generator, tmp_path) -> None:
    client = _client(generator, tmp_path)

    def stop_after_four(count: int, ws) -> None:
        if count == 4:
            ws.send_json({"type": "stop"})

    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 40, "pace": "realtime", "save": True})
        frames, events = _receive_until_done(ws, stop_after_four)
    done = events[-1]
    assert done["stopped"] and len(frames) < 40
    saved = client.get(done["video"])
    assert saved.status_code == 200 and len(saved.content) > 0
    summary = client.get(done["video"].replace(".mp4", ".json")).json()
    assert summary["completed"] is False and summary["prompts"] == [
        {"prompt": PROMPT, "start_latent_frame": 0}
    ]
    assert client.get("/videos/../secret.mp4").status_code == 404


def test_serve_config_composes_with_generate_groups(tmp_path) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="serve"):
        cfg = compose(
            config_name="serve", overrides=[f"checkpoint={tmp_path}/missing.ckpt", "teacher_ckpt=x"]
        )
    assert cfg.model.causal and cfg.metrics is None and cfg.port == 8000
    assert cfg.checkpoint.endswith("missing.ckpt")
    app = make_app(cfg)  # the checkpoint does not load: the app still builds and says why
    info = TestClient(app).get("/api/info").json()
    assert not info["ready"] and "missing.ckpt" in info["error"]
    assert len(info["suggestions"]) >= 16


def test_the_servers_own_length_limit_names_the_setting(generator, tmp_path) -> None:
    client = _client(generator, tmp_path, max_length=8)
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 16})
        error = ws.receive_json()
    assert (
        "this server streams at most 8 latent frames" in error["message"] and "max_length" in error["message"]
    )


# -- starting from given frames ---------------------------------------------------------------------


def _clip_client(generator: VideoGenerator, tmp_path: Path, **limits) -> tuple[TestClient, torch.Tensor]:
    clip = torch.rand(3, 3, 16, 16) * 2 - 1  # 3 frames: held to 4, two chunks
    app = build_app(
        lambda: generator,
        limits=StreamLimits(**{"queue_frames": 4, "stats_every_frames": 4, "window_frames": 2, **limits}),
        save_dir=tmp_path / "saved",
        default_length=16,
        suggestions=[PROMPT],
        clips={PROMPT: clip},
    )
    return TestClient(app), clip


def _png(array: np.ndarray, kind: str = "PNG") -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_stream_from_a_clip_shows_its_frames_then_continues_them(generator, tmp_path) -> None:
    client, clip = _clip_client(generator, tmp_path)
    assert client.get("/api/info").json()["clips"] == [PROMPT]
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        start = {"type": "start", "prompt": PROMPT, "seed": 2, "length": 6, "pace": "fast", "save": True}
        ws.send_json({**start, "start_from": {"clip": PROMPT}})
        frames, events = _receive_until_done(ws)
    started = events[0]
    assert started["start_from"]["given_frames"] == 3 and started["start_from"]["held_frames"] == 1
    assert len(frames) == 4 + 6
    held = torch.cat([clip, clip[:, -1:]], dim=1)  # (3, 4, H, W)
    for index, _, image in frames[:4]:
        assert np.array_equal(image, decode_frame_message(encode_frame(held[:, index], index, 0))[2])
    # the continuation is generate_video's from the same prefix and seed
    from sfpp.generate import load_prefix

    chunks: list[torch.Tensor] = []
    prefix = load_prefix(generator, clip, "clip")
    plan = generator.plan(PROMPT, 6, prefix=prefix)
    generator.run(plan, tmp_path / "again.mp4", seed=2, on_chunk=lambda i: chunks.append(i.frames))
    expected = torch.cat(chunks, dim=1)  # (3, 10, H, W)
    for index, _, image in frames:
        assert np.array_equal(image, decode_frame_message(encode_frame(expected[:, index], index, 0))[2])
    saved = json.loads(next((tmp_path / "saved").glob("*.json")).read_text())
    assert saved["prefix"]["given_frames"] == 3 and saved["frames_written"] == 10


def test_a_stream_from_an_uploaded_image_holds_it_for_a_chunk(generator, tmp_path) -> None:
    client, _ = _clip_client(generator, tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # 2x the frame size
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json(
            {
                "type": "start",
                "prompt": PROMPT,
                "length": 4,
                "pace": "fast",
                "start_from": {"image": _png(image), "name": "frame.png"},
            }
        )
        frames, events = _receive_until_done(ws)
    assert events[0]["start_from"]["source"] == "image: frame.png" and len(frames) == 2 + 4
    assert np.array_equal(frames[0][2], frames[1][2])  # the image, held to fill its chunk


@pytest.mark.parametrize(
    ("start_from", "message"),
    [
        ({"clip": "a green blob"}, "no clip 'a green blob'"),
        ({"image": "data:image/png;base64,not base64!", "name": "x.png"}, "not base64 image data"),
        ({"image": "data:image/png;base64,aGVsbG8=", "name": "hello.png"}, "not an image"),
        ("frame.png", 'start_from is {"clip": name}'),
    ],
)
def test_bad_starting_frames_answer_with_one_line(generator, tmp_path, start_from, message) -> None:
    client, _ = _clip_client(generator, tmp_path)
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 4, "start_from": start_from})
        error = ws.receive_json()
        assert error["type"] == "error" and message in error["message"], error
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 2, "pace": "fast"})  # still serving
        frames, _ = _receive_until_done(ws)
        assert len(frames) == 2


def test_uploads_of_the_wrong_size_format_or_weight_are_refused(generator, tmp_path) -> None:
    client, _ = _clip_client(generator, tmp_path, max_upload_bytes=3000)
    wrong_size = _png(np.zeros((20, 16, 3), dtype=np.uint8))
    gif = _png(np.zeros((16, 16, 3), dtype=np.uint8), "GIF")
    heavy = _png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cases = [
        (wrong_size, "frame_size=[16, 16]"),
        (gif, "a GIF image; upload one of PNG"),
        (heavy, "3 kB at most"),
    ]
    with client.websocket_connect("/ws") as ws:
        _hello(ws)
        for data, message in cases:
            ws.send_json({"type": "start", "prompt": PROMPT, "start_from": {"image": data, "name": "up"}})
            error = ws.receive_json()
            assert error["type"] == "error" and message in error["message"], error
        # a prefix that leaves no room in the RoPE table for the length asked
        ws.send_json({"type": "start", "prompt": PROMPT, "length": 64, "start_from": {"clip": PROMPT}})
        error = ws.receive_json()
        assert "RoPE table" in error["message"] and "shorter length" in error["message"]


def test_the_page_offers_the_clips_and_an_upload(tmp_path) -> None:
    page = (Path(__file__).parents[1] / "src" / "sfpp" / "apps" / "static" / "stream.html").read_text()
    assert 'id="start_from"' in page and 'type="file"' in page and "readAsDataURL" in page
    with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="serve"):
        cfg = compose(
            config_name="serve", overrides=[f"checkpoint={tmp_path}/missing.ckpt", "teacher_ckpt=x"]
        )
    info = TestClient(make_app(cfg)).get("/api/info").json()
    assert len(info["clips"]) == 8 and info["max_upload_bytes"] == 2_000_000
