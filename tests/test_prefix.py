"""Starting from given frames: sfpp.diffusion.rollout.write_prefix and sfpp.inference.prefix (init_video / init_image)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from sfpp.codecs.pixel import PixelCodec
from sfpp.diffusion.rollout import FewStepSampler, rollout, stream_rollout, write_prefix
from sfpp.diffusion.schedule import add_noise
from sfpp.generate import generate
from sfpp.inference.prefix import encode_prefix, fit_frames, read_frames
from sfpp.io.video import write_video
from sfpp.models import build_model
from test_generate import PROMPT, _cfg, checkpoint  # noqa: F401  (the module's fixture)


def _student(chunk: int = 2):
    torch.manual_seed(0)
    return build_model(
        "tiny",
        causal=True,
        num_frames_per_chunk=chunk,
        attention_backend="sdpa",
        in_channels=3,
        out_channels=3,
    ).eval()


def test_continuing_given_latents_equals_the_rest_of_the_rollout_that_made_them() -> None:
    model = _student()
    sampler = FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)
    context = torch.randn(1, 4, model.config.text_dim)
    shape = (3, 4, 4)

    def cache():
        return model.new_kv_cache(1, 4, 4, window_frames=4)

    with torch.no_grad():
        whole = rollout(
            model, context, cache(), 10, shape, sampler, torch.Generator().manual_seed(3)
        )  # 5 chunks
        # the generator as the rollout left it after two chunks (it consumed their draws)
        generator = torch.Generator().manual_seed(3)
        list(stream_rollout(model, context, cache(), 4, shape, sampler, generator))
        given = cache()
        chunks = list(write_prefix(model, context, given, whole[:, :, :4], sampler))
        assert [c.frame_offset for c in chunks] == [0, 2] and given.num_frames == 4
        rest = rollout(model, context, given, 6, shape, sampler, generator)
    torch.testing.assert_close(rest, whole[:, :, 4:], rtol=0, atol=0)  # frame for frame


def test_with_context_noise_the_given_chunks_are_renoised_like_generated_ones() -> None:
    model = _student()
    base = FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)
    sampler = FewStepSampler(base.timesteps, context_timestep=100.0)
    context = torch.randn(1, 4, model.config.text_dim)
    latents = torch.randn(1, 3, 4, 4, 4)
    with torch.no_grad():
        written = model.new_kv_cache(1, 4, 4, window_frames=4)
        list(write_prefix(model, context, written, latents, sampler, torch.Generator().manual_seed(1)))
        by_hand = model.new_kv_cache(1, 4, 4, window_frames=4)
        draws = torch.Generator().manual_seed(1)
        t = torch.full((1,), 100.0)
        for start in (0, 2):
            chunk = latents[:, :, start : start + 2]
            noisy = add_noise(chunk, torch.randn(chunk.shape, generator=draws), sampler.context_sigma)
            model.write_chunk(noisy, t, context, kv_cache=by_hand, frame_offset=start)
        x = torch.randn(1, 3, 2, 4, 4)
        t = torch.full((1,), 500.0)
        torch.testing.assert_close(
            model(x, t, context, kv_cache=written, frame_offset=4),
            model(x, t, context, kv_cache=by_hand, frame_offset=4),
            rtol=0,
            atol=0,
        )


def test_write_prefix_refuses_what_cannot_be_written() -> None:
    model = _student()
    sampler = FewStepSampler.from_steps([1000, 500], shift=5.0)
    context = torch.randn(1, 4, model.config.text_dim)
    cache = model.new_kv_cache(1, 4, 4, window_frames=4)
    with pytest.raises(ValueError, match="multiple of num_frames_per_chunk"):
        list(write_prefix(model, context, cache, torch.zeros(1, 3, 3, 4, 4), sampler))
    with pytest.raises(ValueError, match=r"\(B=1, C, F, H, W\)"):
        list(write_prefix(model, context, cache, torch.zeros(2, 3, 2, 4, 4), sampler))
    with pytest.raises(ValueError, match="RoPE"):
        list(
            write_prefix(model, context, cache, torch.zeros(1, 3, model.rope_max_seq_len + 2, 4, 4), sampler)
        )


def test_encode_prefix_holds_the_last_frame_to_whole_chunks() -> None:
    codec = PixelCodec()
    frames = torch.rand(3, 3, 8, 8) * 2 - 1
    prefix = encode_prefix(codec, frames, chunk_frames=2, source="init_video=x.mp4")
    assert prefix.num_latent_frames == 4 and prefix.given_frames == 3 and prefix.held_frames == 1
    decoded = codec.decode(prefix.latents)[0]
    torch.testing.assert_close(decoded[:, :3], frames)
    torch.testing.assert_close(decoded[:, 3], frames[:, 2])  # the held frame
    image = encode_prefix(codec, frames[:, :1], chunk_frames=3, source="init_image=x.png")
    assert image.num_latent_frames == 3 and image.held_frames == 2
    assert image.describe() == {
        "source": "init_image=x.png",
        "given_frames": 1,
        "held_frames": 2,
        "latent_frames": 3,
    }


def test_read_and_fit_frames(tmp_path: Path) -> None:
    video = torch.linspace(-1, 1, 3 * 4 * 8 * 8).reshape(3, 4, 8, 8)
    write_video(tmp_path / "clip.mp4", video, fps=8, upscale=4)  # 32x32 frames, as sfpp writes them
    frames = read_frames(tmp_path / "clip.mp4", "init_video")
    assert frames.shape == (3, 4, 32, 32) and float(frames.min()) >= -1.0 and float(frames.max()) <= 1.0
    fitted = fit_frames(frames, (8, 8), "init_video=clip.mp4")
    assert fitted.shape == (3, 4, 8, 8)
    assert float((fitted - video).abs().mean()) < 0.05  # lossy mp4, averaged back per 4x4 block
    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    assert torch.equal(read_frames(tmp_path / "white.png", "init_image"), torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"frames of 8x8 do not fit frame_size=\[16, 16\]"):
        fit_frames(torch.zeros(3, 1, 8, 8), (16, 16), "init_image=white.png")
    with pytest.raises(ValueError, match="do not fit"):
        fit_frames(torch.zeros(3, 1, 32, 48), (16, 16), "init_image=x")  # not the same factor in both axes
    with pytest.raises(FileNotFoundError, match="init_video=.*missing.mp4 does not exist"):
        read_frames(tmp_path / "missing.mp4", "init_video")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        read_frames(tmp_path / "notes.txt", "init_video")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot be read as mp4"):
        read_frames(tmp_path / "broken.mp4", "init_video")


def test_generate_continues_a_video_it_wrote(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    [first] = generate(_cfg(checkpoint, tmp_path / "a", f"prompt={PROMPT}", "length=6", "upscale=2"))
    chunks = {}
    [result] = generate(
        _cfg(checkpoint, tmp_path / "b", f"prompt={PROMPT}", "length=4", f"init_video={first.video_path}"),
        on_chunk=lambda info: chunks.__setitem__(info.chunk.frame_offset, info.chunk.latents.clone()),
    )
    summary = json.loads(result.json_path.read_text())
    assert summary["prefix"] == {
        "source": f"init_video={first.video_path}",
        "given_frames": 6,
        "held_frames": 0,
        "latent_frames": 6,
        "frames": 6,
    }
    assert summary["frames"] == summary["frames_written"] == 10 and summary["latent_frames"] == 4
    assert sorted(chunks) == [0, 2, 4, 6, 8]  # the given chunks first, then the continuation
    assert len(imageio.mimread(result.video_path, memtest=False)) == 10
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    [animated] = generate(
        _cfg(
            checkpoint, tmp_path / "c", f"prompt={PROMPT}", "length=2", f"init_image={tmp_path / 'black.png'}"
        )
    )
    assert animated.summary["prefix"]["given_frames"] == 1 and animated.summary["prefix"]["held_frames"] == 1
    assert animated.summary["frames"] == 4


def test_an_image_can_condition_the_first_chunk_as_wan2_2_ti2v_does(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    """``prefix_in_first_chunk``: the image is the first frame of the first generated chunk, not a chunk of its own."""
    Image.fromarray(np.full((16, 16, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    chunks = {}
    [result] = generate(
        _cfg(
            checkpoint,
            tmp_path / "a",
            f"prompt={PROMPT}",
            "length=4",
            f"init_image={tmp_path / 'white.png'}",
            "prefix_in_first_chunk=true",
        ),
        on_chunk=lambda info: chunks.__setitem__(info.chunk.frame_offset, info.chunk.latents.clone()),
    )
    prefix = result.summary["prefix"]
    assert prefix["in_first_chunk"] and prefix["latent_frames"] == 1 and prefix["held_frames"] == 0
    assert sorted(chunks) == [0, 2]  # no chunk of given frames: the image is inside the first one
    assert torch.equal(chunks[0][:, :, :1], torch.ones(1, 3, 1, 16, 16))  # the image, exactly
    assert result.summary["frames"] == result.summary["frames_written"] == 4
    first = imageio.mimread(result.video_path, memtest=False)[0]
    assert first.min() >= 250  # the video starts with the white image
    with pytest.raises(ValueError, match="not fewer than a chunk"):
        generate(
            _cfg(
                checkpoint,
                tmp_path / "b",
                f"prompt={PROMPT}",
                "length=2",
                f"init_video={result.video_path}",
                "prefix_in_first_chunk=true",
            )
        )


def test_generate_refuses_bad_given_frames_before_loading(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="at most one of init_video and init_image"):
        generate(
            _cfg(
                checkpoint,
                tmp_path,
                f"prompt={PROMPT}",
                f"init_video={tmp_path}/x.mp4",
                f"init_image={tmp_path}/y.png",
            )
        )
    with pytest.raises(ValueError, match="init_image=.*clip.mp4 is not an image"):
        generate(_cfg(checkpoint, tmp_path, f"prompt={PROMPT}", f"init_image={tmp_path}/clip.mp4"))
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="do not fit frame_size"):
        generate(_cfg(checkpoint, tmp_path, f"prompt={PROMPT}", f"init_image={tmp_path}/odd.png"))
    with pytest.raises(ValueError, match="RoPE table"):
        generate(
            _cfg(checkpoint, tmp_path, f"prompt={PROMPT}", "length=1024", f"init_image={tmp_path}/black.png")
        )


def test_an_image_is_one_latent_frame_of_the_wan_vae(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan

    from sfpp.codecs.wan_vae import WanVAECodec
    from test_codecs import TINY_VAE_CONFIG

    torch.manual_seed(0)
    AutoencoderKLWan(**TINY_VAE_CONFIG).save_pretrained(tmp_path)
    codec = WanVAECodec(tmp_path)
    image = torch.rand(3, 1, 16, 16) * 2 - 1
    alone = codec.encode(image[None])  # (1, C, 1, 4, 4): one frame, one latent frame
    assert alone.shape[2] == 1
    prefix = encode_prefix(codec, image, chunk_frames=3, source="init_image=x.png")
    # 3 latent frames = 1 + 4 * 2 frames: the image held for 8 more
    assert prefix.num_latent_frames == 3 and prefix.given_frames == 1 and prefix.held_frames == 8
    torch.testing.assert_close(prefix.latents[:, :, :1], alone)  # the first latent frame is the image's
    clip = encode_prefix(codec, torch.rand(3, 6, 16, 16) * 2 - 1, chunk_frames=3, source="init_video=x.mp4")
    assert (clip.num_latent_frames, clip.given_frames, clip.held_frames) == (3, 6, 3)  # 6 frames -> 9
