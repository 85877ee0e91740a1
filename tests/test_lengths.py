"""Tests for sfpp.diffusion.lengths: golden lengths, round trips, rounding, parsing, errors."""

from __future__ import annotations

import pytest

from sfpp.diffusion.lengths import VideoTiming, parse_length

WAN = VideoTiming()  # 16 fps, stride 4, chunks of 3
PIXEL = VideoTiming(fps=16.0, temporal_stride=1, num_frames_per_chunk=1)


def test_golden_5_seconds():
    assert WAN.latent_frames_from_seconds(5, rounding="exact") == 21
    assert WAN.frames_from_latent_frames(21) == 81
    assert WAN.latent_frames_from_frames(81) == 21
    assert WAN.chunks(21) == 7
    assert WAN.seconds_from_latent_frames(21) == 5.0


def test_golden_100_seconds_rounds_to_whole_chunks_explicitly():
    assert WAN.latent_frames_from_frames(1601) == 401
    assert WAN.seconds_from_latent_frames(401) == 100.0
    assert WAN.latent_frames_from_seconds(100, rounding="down") == 399
    assert WAN.latent_frames_from_seconds(100.0) == 399  # default rounding is down
    assert WAN.latent_frames_from_seconds(100, rounding="up") == 402
    assert WAN.latent_frames_from_seconds(100, rounding="nearest") == 402  # 133.67 chunks
    with pytest.raises(ValueError, match=r"rounding='down' \(399.*rounding='up' \(402"):
        WAN.latent_frames_from_seconds(100, rounding="exact")


def test_pixel_codec_stride_1():
    assert PIXEL.latent_frames_from_frames(8) == 8
    assert PIXEL.frames_from_latent_frames(8) == 8
    assert PIXEL.chunks(8) == 8
    assert PIXEL.seconds_from_latent_frames(17) == 1.0
    assert PIXEL.latent_frames_from_seconds(1, rounding="exact") == 17


def test_round_trip_frames_latent_frames():
    for latent in range(1, 50):
        assert WAN.latent_frames_from_frames(WAN.frames_from_latent_frames(latent)) == latent


def test_invalid_frame_count_names_the_nearest_valid_counts():
    with pytest.raises(ValueError, match=r"num_frames=80 .*temporal_stride=4.*77 or 81"):
        WAN.latent_frames_from_frames(80)
    with pytest.raises(ValueError, match="nearest valid: 1"):
        WAN.latent_frames_from_frames(0)
    with pytest.raises(ValueError, match="latent_frames"):
        WAN.frames_from_latent_frames(0)


def test_rounding_nearest_and_float_seconds_are_exact():
    # 2.5 s = 40 frames -> 11 latent frames = 3.67 chunks
    assert WAN.latent_frames_from_seconds(2.5, rounding="nearest") == 12
    assert WAN.latent_frames_from_seconds(2.5, rounding="down") == 9
    # 0.75 s = 12 frames -> 4 latent frames = 1.33 chunks: nearest rounds down
    assert WAN.latent_frames_from_seconds(0.75, rounding="nearest") == 3
    # exactly half a chunk rounds up: 0.125 s = 2 frames = 1.5 latent frames
    single = VideoTiming(fps=16.0, temporal_stride=4, num_frames_per_chunk=1)
    assert single.latent_frames_from_seconds(0.125, rounding="nearest") == 2
    # 0.1 * 3 is not 0.3 in floating point; the conversion must not care
    timing = VideoTiming(fps=10.0, temporal_stride=1, num_frames_per_chunk=1)
    assert timing.latent_frames_from_seconds(0.3, rounding="exact") == 4


def test_too_short_for_a_chunk():
    with pytest.raises(ValueError, match="shorter than one chunk.*rounding='up'"):
        WAN.latent_frames_from_seconds(0.1)
    assert WAN.latent_frames_from_seconds(0.1, rounding="up") == 3
    assert WAN.latent_frames_from_seconds(0, rounding="up") == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounding must be one of"):
        WAN.latent_frames_from_seconds(5, rounding="floor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        WAN.latent_frames_from_seconds(-1)
    with pytest.raises(ValueError, match="finite"):
        WAN.latent_frames_from_seconds(float("inf"))
    with pytest.raises(ValueError, match="fps"):
        VideoTiming(fps=0)
    with pytest.raises(ValueError, match="temporal_stride"):
        VideoTiming(temporal_stride=0)
    with pytest.raises(ValueError, match="num_frames_per_chunk"):
        VideoTiming(num_frames_per_chunk=2.5)  # type: ignore[arg-type]


def test_chunks_rejects_partial_chunks():
    with pytest.raises(ValueError, match=r"num_frames_per_chunk=3.*21 or 24"):
        WAN.chunks(22)


def test_parse_length():
    assert WAN.parse_length("5s") == 21
    assert WAN.parse_length(" 5 s ") == 21
    assert WAN.parse_length("100s") == 399
    assert WAN.parse_length("100s", rounding="up") == 402
    assert WAN.parse_length(21) == 21
    assert WAN.parse_length("21") == 21
    assert parse_length("5s") == 21
    assert parse_length("1s", timing=PIXEL) == 17
    with pytest.raises(ValueError, match="exact"):
        parse_length("100s", rounding="exact")
    with pytest.raises(ValueError, match="num_frames_per_chunk=3"):
        WAN.parse_length(22)
    for bad in ("5 sec", "5m", "-5s", 5.0, True, None):
        with pytest.raises(ValueError, match="'5s'"):
            WAN.parse_length(bad)  # type: ignore[arg-type]


def test_frozen():
    with pytest.raises(AttributeError):
        WAN.fps = 24.0  # type: ignore[misc]
