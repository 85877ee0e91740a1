"""What a stream of the streaming page starts from: one of the server's clips or an uploaded image.

A start command's ``start_from`` is ``{"clip": name}`` or ``{"image": data URL, "name": file name}``;
:func:`prefix_from` turns it into the :class:`~sfpp.inference.prefix.VideoPrefix` the stream writes
into its cache before it generates, checking the upload's size, format and frame size and that the
prefix leaves room in the model's RoPE table for the length asked. Every refusal is a
``ValueError`` of one line, which the page shows.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sfpp.inference.generator import VideoGenerator
from sfpp.inference.prefix import VideoPrefix, encode_prefix, fit_frames

__all__ = ["UPLOAD_FORMATS", "decode_upload", "prefix_from"]

#: Image formats a stream can start from (as Pillow names them).
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")


def decode_upload(data_url: Any, name: str, frame_size: tuple[int, int], max_bytes: int) -> torch.Tensor:
    """An uploaded image as frames ``(3, 1, H, W)`` in ``[-1, 1]`` at ``frame_size``.

    Args:
        data_url: ``data:image/...;base64,...`` (or the bare base64 text).
        name: The file's name, for the messages.
        frame_size: The student's ``(height, width)``; the image must be it or a whole multiple of it.
        max_bytes: Largest image accepted.

    Raises:
        ValueError: For an upload that is too large, not base64, not an image, of another format or
            of a size the student cannot take.
    """
    from PIL import Image, UnidentifiedImageError

    text = str(data_url)
    encoded = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    if len(encoded) * 3 // 4 > max_bytes:
        raise ValueError(
            f"{name}: the image is about {len(encoded) * 3 // 4000} kB; this server takes {max_bytes // 1000} kB at most"
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: the upload is not base64 image data") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in UPLOAD_FORMATS:
                raise ValueError(f"{name}: a {image.format} image; upload one of {', '.join(UPLOAD_FORMATS)}")
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in 0..255
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{name}: not an image ({', '.join(UPLOAD_FORMATS)})") from None
    frames = torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)[:, None]  # (3, 1, H, W)
    return fit_frames(frames, frame_size, name)


def prefix_from(
    start_from: Any,
    generator: VideoGenerator,
    clips: Mapping[str, torch.Tensor],
    num_latent_frames: int,
    max_upload_bytes: int,
) -> VideoPrefix:
    """The given frames of ``start_from``, encoded for ``generator``.

    Args:
        start_from: ``{"clip": name}`` or ``{"image": data URL, "name": file name}``.
        generator: The loaded student.
        clips: The server's clips, ``{name: frames (3, F, H, W)}``.
        num_latent_frames: Latent frames the stream will generate after the prefix.
        max_upload_bytes: Largest image accepted.

    Raises:
        ValueError: For an unknown clip, a bad upload (:func:`decode_upload`), or a prefix that leaves
            no room for the length asked.
    """
    if not isinstance(start_from, Mapping) or not ({"clip", "image"} & set(start_from)):
        raise ValueError('start_from is {"clip": name} or {"image": data URL}')
    if "clip" in start_from:
        name = str(start_from["clip"])
        if name not in clips:
            raise ValueError(f"no clip {name!r} on this server; choose one of the page's list")
        frames, source = clips[name], f"clip: {name}"
    else:
        name = str(start_from.get("name") or "image")
        frames = decode_upload(start_from["image"], name, generator.frame_size, max_upload_bytes)
        source = f"image: {name}"
    prefix = encode_prefix(
        generator.codec, frames, generator.model.config.num_frames_per_chunk, source, device=generator.device
    )
    if prefix.num_latent_frames + num_latent_frames > generator.max_latent_frames:
        raise ValueError(
            f"{prefix.num_latent_frames} given latent frames and {num_latent_frames} more exceed the "
            f"student's {generator.max_latent_frames} latent frames (its RoPE table); ask for a shorter length"
        )
    return prefix
