"""Codecs: the pixel codec's exact round trip and the Wan VAE codec on a tiny random AutoencoderKLWan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from sfpp.codecs import PixelCodec, StreamDecoder, VideoCodec, WanVAECodec

LATENTS_MEAN = [0.1, -0.2, 0.3, 0.05]
LATENTS_STD = [1.5, 0.5, 2.0, 0.8]
# Smallest AutoencoderKLWan with Wan's strides pattern: 3 levels -> spatial stride 4, two temporal
# downsamplings -> temporal stride 4 (which diffusers' encode loop assumes). ~160k parameters.
TINY_VAE_CONFIG = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True, True],
    latents_mean=LATENTS_MEAN,
    latents_std=LATENTS_STD,
)


def chunks(latents: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == latents.shape[2]
    return list(torch.split(latents, sizes, dim=2))


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG)
    path = tmp_path_factory.mktemp("tiny_wan_vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def codec(tiny_vae_dir: Path) -> WanVAECodec:
    return WanVAECodec(tiny_vae_dir)


@pytest.fixture(scope="module")
def reference_vae(tiny_vae_dir: Path) -> AutoencoderKLWan:
    return AutoencoderKLWan.from_pretrained(tiny_vae_dir, local_files_only=True).eval()


# ---------------------------------------------------------------------------------------------
# PixelCodec


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_pixel_codec_round_trip_is_exact(factor: int) -> None:
    codec = PixelCodec(space_to_depth=factor)
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 3 * factor**2, 5, 16 // factor, 16 // factor)
    assert codec.latent_shape(5, 16, 16) == tuple(latents.shape[1:])
    assert torch.equal(codec.decode(latents), video)


def test_pixel_codec_channel_layout() -> None:
    codec = PixelCodec(space_to_depth=2)
    video = torch.zeros(1, 3, 1, 4, 4)
    video[0, 2, 0, 3, 1] = 1.0  # blue, block (1, 0), offset (i, j) = (1, 1)
    latents = codec.encode(video)
    nonzero = latents.nonzero().tolist()
    assert nonzero == [[0, 2 * 4 + 1 * 2 + 1, 0, 1, 0]]


def test_pixel_codec_properties_and_frame_counts() -> None:
    codec = PixelCodec(space_to_depth=2)
    assert isinstance(codec, VideoCodec)
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (12, 2, 1)
    assert codec.num_frames(7) == 7
    assert codec.num_latent_frames(7) == 7
    assert codec.to("cpu") is codec


def test_pixel_codec_decode_clamps_unless_disabled() -> None:
    latents = torch.full((1, 3, 2, 4, 4), 1.5)
    assert PixelCodec().decode(latents).max() == 1.0
    assert PixelCodec(clamp=False).decode(latents).max() == 1.5


def test_pixel_codec_stream_decoder_matches_decode() -> None:
    codec = PixelCodec(space_to_depth=2)
    latents = torch.randn(2, 12, 7, 4, 4)
    stream = codec.stream_decoder()
    assert isinstance(stream, StreamDecoder)
    frames = torch.cat([stream.decode_chunk(c) for c in chunks(latents, [3, 3, 1])], dim=2)
    assert torch.equal(frames, codec.decode(latents))
    assert stream.num_latent_frames_decoded == 7
    stream.reset()
    assert stream.num_latent_frames_decoded == 0


def test_pixel_codec_errors() -> None:
    with pytest.raises(ValueError, match="space_to_depth"):
        PixelCodec(space_to_depth=0)
    codec = PixelCodec(space_to_depth=4)
    with pytest.raises(ValueError, match="spatial stride 4"):
        codec.encode(torch.zeros(1, 3, 2, 10, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        codec.encode(torch.zeros(1, 4, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 48, F', h, w\)"):
        codec.decode(torch.zeros(1, 3, 2, 4, 4))


# ---------------------------------------------------------------------------------------------
# WanVAECodec: configuration, frame counts, lazy loading


def test_wan_codec_properties_without_loading_weights(tiny_vae_dir: Path) -> None:
    codec = WanVAECodec(tiny_vae_dir, dtype="float32")
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (4, 4, 4)
    assert codec.latent_shape(9, 16, 24) == (4, 3, 4, 6)
    assert [codec.num_frames(n) for n in (1, 2, 21)] == [1, 5, 81]
    assert [codec.num_latent_frames(f) for f in (1, 5, 81)] == [1, 2, 21]
    assert torch.equal(codec.latents_mean, torch.tensor(LATENTS_MEAN))
    assert not codec.is_loaded


def test_wan_codec_rejects_frame_counts_that_are_not_one_plus_4k(codec: WanVAECodec) -> None:
    with pytest.raises(ValueError, match=r"1 \+ 4 \* k frames \(nearest: 5 or 9\)"):
        codec.num_latent_frames(8)
    with pytest.raises(ValueError, match="num_frames=8"):
        codec.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="at least 1"):
        codec.num_frames(0)


# ---------------------------------------------------------------------------------------------
# WanVAECodec: encode / decode against diffusers


def test_wan_encode_shape_and_normalisation(codec: WanVAECodec, reference_vae: AutoencoderKLWan) -> None:
    torch.manual_seed(1)
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 4, 3, 4, 4)
    assert latents.dtype == torch.float32
    assert codec.is_loaded
    with torch.no_grad():
        raw = reference_vae.encode(video).latent_dist.mean
    mean = torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std, rtol=0, atol=1e-6)


def test_wan_decode_shape_and_denormalisation(codec: WanVAECodec, reference_vae: AutoencoderKLWan) -> None:
    torch.manual_seed(2)
    latents = torch.randn(1, 4, 3, 4, 4)
    video = codec.decode(latents)
    assert video.shape == (1, 3, 9, 16, 16)
    assert video.min() >= -1.0 and video.max() <= 1.0
    mean = torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        expected = reference_vae.decode(latents * std + mean).sample
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.normalize(codec.denormalize(latents)), latents)


def test_wan_encode_decode_run_without_gradients(codec: WanVAECodec) -> None:
    latents = torch.randn(1, 4, 1, 4, 4, requires_grad=True)
    assert not codec.decode(latents).requires_grad
    assert all(not p.requires_grad for p in codec.vae.parameters())
    assert not codec.vae.training


# ---------------------------------------------------------------------------------------------
# WanVAECodec: streaming decode


@pytest.fixture(scope="module")
def latents_and_full_decode(codec: WanVAECodec) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    latents = torch.randn(2, 4, 6, 4, 4)
    return latents, codec.decode(latents)


@pytest.mark.parametrize("sizes", [[3, 3], [1, 1, 1, 1, 1, 1], [2, 3, 1]])
def test_wan_stream_decode_equals_full_decode(
    codec: WanVAECodec, latents_and_full_decode: tuple[torch.Tensor, torch.Tensor], sizes: list[int]
) -> None:
    latents, full = latents_and_full_decode
    stream = codec.stream_decoder()
    pieces = [stream.decode_chunk(c) for c in chunks(latents, sizes)]
    assert [p.shape[2] for p in pieces] == [1 + 4 * (sizes[0] - 1)] + [4 * s for s in sizes[1:]]
    streamed = torch.cat(pieces, dim=2)
    assert streamed.shape == full.shape == (2, 3, 21, 16, 16)
    max_diff = (streamed - full).abs().max().item()
    print(f"stream vs full decode, chunks {sizes}: max abs diff {max_diff:.3e}")
    assert max_diff <= 1e-5


def test_wan_stream_state_resets_between_videos(codec: WanVAECodec) -> None:
    torch.manual_seed(4)
    first, second = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 4, 4, 4, 4)
    stream = codec.stream_decoder()
    for chunk in chunks(first, [3, 1]):
        stream.decode_chunk(chunk)
    # Without a reset, the second video continues the first one (no first-frame path, old cache).
    continued = stream.decode_chunk(second[:, :, :3])
    assert continued.shape[2] == 12
    stream.reset()
    assert stream.num_latent_frames_decoded == 0 and stream.cache_bytes == 0
    streamed = torch.cat([stream.decode_chunk(c) for c in chunks(second, [3, 1])], dim=2)
    torch.testing.assert_close(streamed, codec.decode(second), rtol=0, atol=1e-5)


def test_wan_stream_decoders_are_independent_of_each_other_and_of_full_decodes(codec: WanVAECodec) -> None:
    torch.manual_seed(5)
    a, b = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 4, 4, 4, 4)
    stream_a, stream_b = codec.stream_decoder(), codec.stream_decoder()
    out_a, out_b = [], []
    for chunk_a, chunk_b in zip(chunks(a, [2, 2]), chunks(b, [2, 2]), strict=True):
        out_a.append(stream_a.decode_chunk(chunk_a))
        codec.decode(torch.randn(1, 4, 2, 4, 4))  # a whole-video decode in between
        out_b.append(stream_b.decode_chunk(chunk_b))
    torch.testing.assert_close(torch.cat(out_a, 2), codec.decode(a), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(out_b, 2), codec.decode(b), rtol=0, atol=1e-5)


def test_wan_stream_memory_is_flat_in_length(codec: WanVAECodec) -> None:
    stream = codec.stream_decoder()
    sizes = []
    for _ in range(6):
        stream.decode_chunk(torch.randn(1, 4, 1, 4, 4))
        sizes.append(stream.cache_bytes)
    assert sizes[1] > 0
    assert len(set(sizes[1:])) == 1, sizes
    assert stream.num_latent_frames_decoded == 6


def test_wan_stream_rejects_a_chunk_of_another_video_shape(codec: WanVAECodec) -> None:
    stream = codec.stream_decoder()
    stream.decode_chunk(torch.randn(1, 4, 1, 4, 4))
    with pytest.raises(ValueError, match="reset"):
        stream.decode_chunk(torch.randn(2, 4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, F', h, w\)"):
        stream.decode_chunk(torch.randn(1, 3, 1, 4, 4))


# ---------------------------------------------------------------------------------------------
# WanVAECodec: paths and errors


def test_wan_codec_accepts_the_diffusers_pipeline_layout(tiny_vae_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_vae_dir, tmp_path / "vae")
    codec = WanVAECodec(tmp_path)
    assert codec.path == tmp_path / "vae"
    assert codec.decode(torch.zeros(1, 4, 1, 4, 4)).shape == (1, 3, 1, 16, 16)


def test_wan_codec_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=f"'{missing}'.*config.json.*diffusion_pytorch_model.safetensors"
    ):
        WanVAECodec(missing)


def test_wan_codec_directory_without_files_lists_what_is_missing(tiny_vae_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing config.json, diffusion_pytorch_model.safetensors"):
        WanVAECodec(tmp_path)
    shutil.copy(tiny_vae_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}': missing diffusion_pytorch_model.safetensors"):
        WanVAECodec(tmp_path)


def test_wan_codec_rejects_other_configs(tiny_vae_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_vae_dir, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="not an AutoencoderKLWan"):
        WanVAECodec(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "temperal_downsample": [True, False]}))
    with pytest.raises(ValueError, match="temporal stride of 2"):
        WanVAECodec(tmp_path / "a")
    with pytest.raises(ValueError, match="codec.dtype"):
        WanVAECodec(tiny_vae_dir, dtype="float64x")
