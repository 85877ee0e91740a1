"""Wan's causal 3D VAE (diffusers ``AutoencoderKLWan``) as a :class:`~sfpp.codecs.base.VideoCodec`.

The weights load from a local diffusers-format directory only (never a hub), lazily on first use.
Latents are normalised per channel with the VAE config's statistics, as Wan's pipelines do::

    z = (mode(q(z | x)) - latents_mean) / latents_std        encode (the posterior mode, no sampling)
    x = D(z * latents_std + latents_mean)                    decode, clamped to [-1, 1]

Streaming: the decoder is causal in time. Each causal convolution keeps the last two frames of its
input (diffusers' feature-map cache) and the decoder runs one latent frame at a time, the first
latent frame of a video taking the "first chunk" path (1 frame instead of ``temporal_stride``).
:class:`WanStreamDecoder` keeps that cache alive between chunks, so decoding a long latent video
chunk by chunk gives the frames of decoding it whole, with memory independent of its length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfpp.codecs.base import StreamDecoder, VideoCodec, resolve_dtype

__all__ = ["WanVAECodec", "WanStreamDecoder", "find_wan_vae_dir"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SHARDED_WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

# diffusers' AutoencoderKLWan.encode feeds the encoder the first frame, then groups of 4 frames.
_DIFFUSERS_ENCODE_GROUP = 4


def find_wan_vae_dir(path: str | Path) -> Path:
    """The directory holding a diffusers ``AutoencoderKLWan``: ``path`` itself or ``path/vae``.

    ``path/vae`` is the layout of a diffusers Wan pipeline repository (``vae/``, ``transformer/``,
    ``text_encoder/``, ``tokenizer/``).

    Args:
        path: A VAE directory or a diffusers Wan pipeline directory.

    Raises:
        FileNotFoundError: If neither directory holds ``config.json`` and
            ``diffusion_pytorch_model.safetensors`` (or its sharded index); the message lists
            every place looked at and what was missing.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Wan VAE path '{root}' does not exist or is not a directory. Set codec.path to a local "
            f"diffusers AutoencoderKLWan directory (with {CONFIG_NAME} and {WEIGHTS_NAME}) or to a "
            "diffusers Wan pipeline directory with a vae/ subfolder; weights are never downloaded."
        )
    problems = []
    for candidate in (root / "vae", root):
        if not candidate.is_dir():
            problems.append(f"'{candidate}': no such directory")
            continue
        missing = []
        if not (candidate / CONFIG_NAME).is_file():
            missing.append(CONFIG_NAME)
        if (
            not (candidate / WEIGHTS_NAME).is_file()
            and not (candidate / SHARDED_WEIGHTS_INDEX_NAME).is_file()
        ):
            missing.append(f"{WEIGHTS_NAME} (or {SHARDED_WEIGHTS_INDEX_NAME})")
        if not missing:
            return candidate
        problems.append(f"'{candidate}': missing {', '.join(missing)}")
    raise FileNotFoundError(
        f"No Wan VAE found at codec.path='{root}'. Expected {CONFIG_NAME} and {WEIGHTS_NAME} in the "
        f"directory itself or in its vae/ subfolder (diffusers Wan layout). Looked at: {'; '.join(problems)}."
    )


class WanVAECodec(VideoCodec):
    """Wan2.1 / Wan2.2 VAE codec over diffusers' ``AutoencoderKLWan``, loaded lazily from a local path.

    Wan2.1's VAE (16 latent channels, 8x8 pixels per latent) and Wan2.2's (48 channels, 2x2 pixel
    patching before three halvings: 16x16 pixels per latent, residual blocks) differ only in their
    ``config.json``; the strides and latent statistics come from there. Both take 4 frames per
    latent frame, the first latent frame encoding one frame.

    Inputs may live on any device; they are moved to ``device`` and cast to ``dtype`` for the VAE,
    and outputs come back as float32 on the input's device. Encoding and decoding run without
    gradients: the VAE is frozen.

    Args:
        path: A local ``AutoencoderKLWan`` directory (``config.json`` and
            ``diffusion_pytorch_model.safetensors``) or a diffusers Wan pipeline directory with a
            ``vae/`` subfolder.
        dtype: Dtype of the VAE weights and activations (a dtype or its name, e.g. ``"bfloat16"``).
        device: Device the VAE runs on.

    Raises:
        FileNotFoundError: If ``path`` holds no VAE (see :func:`find_wan_vae_dir`).
        ValueError: If the config is not an ``AutoencoderKLWan`` one, or its temporal stride is not
            the 4 that diffusers' ``AutoencoderKLWan.encode`` assumes.
    """

    def __init__(
        self,
        path: str | Path,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.path = find_wan_vae_dir(path)
        self.dtype = resolve_dtype(dtype, "codec.dtype")
        self.device = torch.device(device)
        self.config = _read_config(self.path)
        self._vae: Any = None  # AutoencoderKLWan, loaded by _load_vae on first use

        num_levels = len(self.config.get("dim_mult", [1, 2, 4, 4]))
        temporal_downsample = self.config.get("temperal_downsample", [False, True, True])[: num_levels - 1]
        self._temporal_stride = 2 ** sum(bool(flag) for flag in temporal_downsample)
        # The encoder halves height and width once per level but the last; patching folds
        # patch_size x patch_size pixels into channels first (Wan2.2's VAE).
        self._spatial_stride = 2 ** (num_levels - 1) * (self.config.get("patch_size") or 1)
        if self._temporal_stride != _DIFFUSERS_ENCODE_GROUP:
            raise ValueError(
                f"The VAE at '{self.path}' has temperal_downsample={temporal_downsample}, a temporal stride "
                f"of {self._temporal_stride}; diffusers' AutoencoderKLWan encodes frames in groups of "
                f"{_DIFFUSERS_ENCODE_GROUP}, so exactly two of its entries must be true."
            )

        z_dim = int(self.config.get("z_dim", 16))
        mean = self.config.get("latents_mean")
        std = self.config.get("latents_std")
        if mean is None or std is None or len(mean) != z_dim or len(std) != z_dim:
            raise ValueError(
                f"The VAE config '{self.path / CONFIG_NAME}' must list latents_mean and latents_std with "
                f"z_dim={z_dim} entries each (Wan's per-channel latent statistics)."
            )
        # (1, C, 1, 1, 1): broadcast over batch, frames, height and width.
        self._latents_mean = torch.tensor(mean, dtype=torch.float32).reshape(1, z_dim, 1, 1, 1)
        self._latents_std = torch.tensor(std, dtype=torch.float32).reshape(1, z_dim, 1, 1, 1)

    # -- properties -----------------------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        """``z_dim`` of the VAE config (16 for Wan2.1)."""
        return int(self._latents_mean.shape[1])

    @property
    def spatial_stride(self) -> int:
        """``2 ** (len(dim_mult) - 1) * patch_size`` (8 for Wan2.1, 16 for Wan2.2's VAE)."""
        return self._spatial_stride

    @property
    def temporal_stride(self) -> int:
        """4: ``1 + 4 (n - 1)`` frames per ``n`` latent frames."""
        return self._temporal_stride

    @property
    def latents_mean(self) -> Tensor:
        """Per-channel latent mean ``(C,)`` (float32, CPU) from the VAE config."""
        return self._latents_mean.flatten().clone()

    @property
    def latents_std(self) -> Tensor:
        """Per-channel latent standard deviation ``(C,)`` (float32, CPU) from the VAE config."""
        return self._latents_std.flatten().clone()

    @property
    def is_loaded(self) -> bool:
        """Whether the VAE weights have been loaded (they load on the first encode/decode)."""
        return self._vae is not None

    # -- loading --------------------------------------------------------------------------------

    @property
    def vae(self) -> Any:
        """The frozen diffusers ``AutoencoderKLWan`` in eval mode, loaded on first access."""
        if self._vae is None:
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(self.path, torch_dtype=self.dtype, local_files_only=True)
            vae.requires_grad_(False)
            self._vae = vae.eval().to(self.device)
        return self._vae

    def to(self, device: torch.device | str) -> WanVAECodec:
        """Run the VAE on ``device`` from now on (moves it if already loaded); returns ``self``."""
        self.device = torch.device(device)
        if self._vae is not None:
            self._vae.to(self.device)
        return self

    # -- encode / decode ------------------------------------------------------------------------

    def normalize(self, z: Tensor) -> Tensor:
        """Raw VAE latents -> normalised latents: ``(z - latents_mean) / latents_std`` per channel (float32)."""
        mean, std = self._latents_mean.to(z.device), self._latents_std.to(z.device)
        return (z.float() - mean) / std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Normalised latents -> raw VAE latents: ``latents * latents_std + latents_mean`` (float32)."""
        mean, std = self._latents_mean.to(latents.device), self._latents_std.to(latents.device)
        return latents.float() * std + mean

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Encode ``(B, 3, 1 + 4k, H, W)`` in ``[-1, 1]`` to normalised latents ``(B, C, 1 + k, h, w)``."""
        self._check_video(video)
        x = video.to(device=self.device, dtype=self.dtype)
        z = self.vae.encode(x).latent_dist.mode()  # (B, C, F', h, w), the posterior mean
        return self.normalize(z).to(video.device)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised latents ``(B, C, n, h, w)`` to a video ``(B, 3, 1 + 4 (n - 1), H, W)``."""
        self._check_latents(latents)
        z = self.denormalize(latents.to(self.device)).to(self.dtype)
        video = self.vae.decode(z).sample  # (B, 3, F, H, W), clamped by diffusers
        return video.float().to(latents.device)

    def stream_decoder(self) -> WanStreamDecoder:
        """A new :class:`WanStreamDecoder` with an empty causal cache."""
        return WanStreamDecoder(self)

    def __repr__(self) -> str:
        return f"WanVAECodec(path='{self.path}', dtype={self.dtype}, device={self.device})"


class WanStreamDecoder(StreamDecoder):
    """Chunk-wise Wan VAE decoding that carries the decoder's causal cache from chunk to chunk.

    The decoder runs one latent frame at a time, exactly like ``AutoencoderKLWan.decode``, on a
    feature cache owned by this object (so several stream decoders, and whole-video decodes, can be
    used side by side). The cache holds at most the last two frames of each causal convolution's
    input: memory is constant in the video's length. A chunk's batch size and latent size must
    match those of the first chunk until :meth:`reset`.

    Args:
        codec: The codec whose VAE, device and dtype are used.
    """

    def __init__(self, codec: WanVAECodec) -> None:
        self.codec = codec
        self._feature_cache: list[Any] | None = None  # one entry per causal conv of the decoder
        self._num_latent_frames = 0
        self._chunk_shape: tuple[int, int, int] | None = None  # (B, h, w) of the current video

    def reset(self) -> None:
        """Drop the causal cache; the next chunk starts a new video (first-frame path)."""
        self._feature_cache = None
        self._num_latent_frames = 0
        self._chunk_shape = None

    @property
    def num_latent_frames_decoded(self) -> int:
        """Latent frames decoded since construction or the last :meth:`reset`."""
        return self._num_latent_frames

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the causal feature cache (constant once a video has 2 latent frames)."""
        if self._feature_cache is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._feature_cache if isinstance(t, Tensor))

    @torch.no_grad()
    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Decode the next chunk of normalised latents.

        Args:
            latents: ``(B, C, f, h, w)``, the latent frames following the previous chunk.

        Returns:
            ``(B, 3, f', H, W)`` float32 frames in ``[-1, 1]`` on the device of ``latents``, with
            ``f' = 1 + 4 (f - 1)`` for the first chunk of a video and ``4 f`` afterwards.

        Raises:
            ValueError: If the chunk's shape does not fit the codec or the current video.
        """
        codec = self.codec
        codec._check_latents(latents)
        chunk_shape = (latents.shape[0], latents.shape[3], latents.shape[4])
        if self._chunk_shape is not None and chunk_shape != self._chunk_shape:
            raise ValueError(
                f"chunk of shape {tuple(latents.shape)} does not continue the current video of (B, h, w) = "
                f"{self._chunk_shape}; call reset() before decoding another video."
            )
        vae = codec.vae
        if self._feature_cache is None:
            self._feature_cache = [None] * _count_causal_convs(vae.decoder)
        self._chunk_shape = chunk_shape

        z = codec.denormalize(latents.to(codec.device)).to(codec.dtype)
        x = vae.post_quant_conv(z)  # (B, C, f, h, w); kernel 1, so chunking does not change it
        frames = []
        for i in range(x.shape[2]):
            first = self._num_latent_frames == 0
            out = vae.decoder(
                x[:, :, i : i + 1],  # (B, C, 1, h, w)
                feat_cache=self._feature_cache,
                feat_idx=[0],
                first_chunk=first,
            )  # (B, 3 * p^2, 1 if first else 4, H / p, W / p)
            frames.append(out)
            self._num_latent_frames += 1
        video = torch.cat(frames, dim=2)  # (B, 3 * p^2, f', H / p, W / p)
        patch_size = codec.config.get("patch_size")
        if patch_size:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=patch_size)  # (B, 3, f', H, W)
        return video.clamp(-1.0, 1.0).float().to(latents.device)


def _count_causal_convs(module: torch.nn.Module) -> int:
    """Causal 3D convolutions in ``module``: one slot each in the decoder's feature cache."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def _read_config(directory: Path) -> dict[str, Any]:
    """Read and check the ``config.json`` of an ``AutoencoderKLWan`` directory."""
    config_path = directory / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"The VAE config '{config_path}' is not valid JSON: {error}") from error
    class_name = config.get("_class_name", "AutoencoderKLWan")
    if class_name != "AutoencoderKLWan":
        raise ValueError(
            f"'{config_path}' describes a {class_name}, not an AutoencoderKLWan; point codec.path at the "
            "Wan VAE directory (the vae/ folder of a diffusers Wan pipeline)."
        )
    return config
