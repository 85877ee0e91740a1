"""Codecs between pixels and latents: the :class:`VideoCodec` interface and its implementations.

- :class:`PixelCodec`: identity or space-to-depth, for the built-in world of small RGB frames.
- :class:`WanVAECodec`: Wan's causal 3D VAE (diffusers ``AutoencoderKLWan``) from a local path,
  with a :class:`WanStreamDecoder` that decodes long latent videos chunk by chunk in flat memory.
"""

from sfpp.codecs.base import StreamDecoder, VideoCodec
from sfpp.codecs.pixel import PixelCodec, PixelStreamDecoder
from sfpp.codecs.wan_vae import WanStreamDecoder, WanVAECodec, find_wan_vae_dir

__all__ = [
    "PixelCodec",
    "PixelStreamDecoder",
    "StreamDecoder",
    "VideoCodec",
    "WanStreamDecoder",
    "WanVAECodec",
    "find_wan_vae_dir",
]
