"""Window re-encoding: a window inside a rollout gets an image latent first, for the Wan VAE only."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from sfpp.codecs import PixelCodec, WanVAECodec
from sfpp.diffusion.reencode import WindowReencoder
from test_codecs import TINY_VAE_CONFIG


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> WanVAECodec:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_wan_vae")
    AutoencoderKLWan(**TINY_VAE_CONFIG).save_pretrained(path)
    return WanVAECodec(path)


def test_the_first_latent_is_the_last_pixel_frame_encoded_alone(codec) -> None:
    torch.manual_seed(0)
    rollout = torch.randn(2, 4, 7, 4, 4)  # (B, C, latent frames, h, w): 7 latents = 25 pixel frames
    prefix, window = rollout[:, :, :3], rollout[:, :, 3:].clone().requires_grad_(True)
    reencoded = WindowReencoder(mask_first_chunk=True)(prefix, window, codec, chunk=2)
    assert reencoded.shape == window.shape
    pixels = codec.decode(rollout[:, :, :4])  # up to and including the window's first latent
    assert pixels.shape[2] == 1 + 4 * 3
    alone = codec.encode(pixels[:, :, -1:])  # one pixel frame -> one (image) latent
    torch.testing.assert_close(reencoded[:, :, :1], alone)
    assert not torch.allclose(reencoded[:, :, :1], window[:, :, :1].detach())  # it did change
    torch.testing.assert_close(reencoded[:, :, 1:], window[:, :, 1:].detach())
    # the gradient mask: nothing flows through the first chunk, everything through the rest
    reencoded.sum().backward()
    assert torch.all(window.grad[:, :, :2] == 0) and torch.all(window.grad[:, :, 2:] == 1)


def test_unmasked_reencoding_keeps_the_gradient_of_the_chunk_rest(codec) -> None:
    window = torch.randn(1, 4, 4, 4, 4, requires_grad=True)
    reencoded = WindowReencoder(mask_first_chunk=False)(torch.randn(1, 4, 2, 4, 4), window, codec, chunk=2)
    reencoded.sum().backward()
    assert torch.all(window.grad[:, :, 0] == 0) and torch.all(window.grad[:, :, 1:] == 1)


def test_no_op_at_the_start_as_is_and_for_the_pixel_codec(codec) -> None:
    window = torch.randn(1, 4, 4, 4, 4)
    empty = torch.zeros(1, 4, 0, 4, 4)
    assert WindowReencoder()(empty, window, codec, chunk=2) is window  # the window starts the rollout
    assert WindowReencoder(mode="as_is")(torch.randn(1, 4, 3, 4, 4), window, codec, chunk=2) is window
    pixels = torch.randn(1, 3, 4, 16, 16)
    assert WindowReencoder()(torch.randn(1, 3, 5, 16, 16), pixels, PixelCodec(), chunk=2) is pixels
    with pytest.raises(ValueError, match="unknown window mode"):
        WindowReencoder(mode="mask")


def test_the_toy_dmd_path_is_unchanged_bit_for_bit() -> None:
    """A re-encoder on the pixel codec changes nothing: the same windows, the same losses."""
    from test_dmd import PROMPTS, _module

    plain, reencoding = _module(window_frames=4), _module(window_frames=4, window_reencoder=WindowReencoder())
    windows = []
    for module in (plain, reencoding):
        context, _ = module._contexts(PROMPTS)
        window, start = module._rollout_window(context, module._rng(7), keep_graph=True)
        windows.append((window.detach(), start))
    assert windows[0][1] == windows[1][1] and torch.equal(windows[0][0], windows[1][0])


def test_the_gradient_mask_covers_the_frames_that_keep_their_graph(codec) -> None:
    mask = WindowReencoder(mask_first_chunk=True).gradient_mask(codec, 3, 7, 3, "cpu")
    assert mask.shape == (1, 1, 7, 1, 1) and mask.dtype == torch.bool
    assert mask.flatten().tolist() == [False] * 3 + [True] * 4
    assert WindowReencoder(mask_first_chunk=False).gradient_mask(codec, 3, 7, 3, "cpu") is None
    assert WindowReencoder().gradient_mask(codec, 0, 7, 3, "cpu") is None  # the window starts the rollout
    assert WindowReencoder(mode="as_is").gradient_mask(codec, 3, 7, 3, "cpu") is None
    assert WindowReencoder().gradient_mask(PixelCodec(), 3, 7, 3, "cpu") is None
