"""Given frames to start from: an image to animate or a clip to continue (``init_image`` / ``init_video``).

:func:`read_frames` reads the file, :func:`fit_frames` brings its frames to the student's frame size
(the same size, or an integer multiple of it, as the videos sfpp writes with ``upscale``), and
:func:`encode_prefix` encodes them with the student's codec into whole chunks of latent frames. The
generator then writes them into the rolling cache as finished chunks
(:func:`sfpp.diffusion.rollout.write_prefix`) and streams the continuation from the next frame.

Whole chunks: the codec turns ``1 + stride * (n - 1)`` frames into ``n`` latent frames (stride 1 for
the pixel codec, 4 for the Wan VAE, whose first latent frame encodes one frame: an image is exactly
one latent frame) and the cache takes chunks of ``num_frames_per_chunk`` latent frames. Given frames
that do not fill whole chunks are completed by holding the last one: an image becomes a still first
chunk, and a clip is held on its last frame up to the chunk boundary. The video written holds the
given frames (as the codec reproduces them), the held ones, then the continuation; its JSON says
how many of each.

Inside the first chunk (``in_first_chunk``, Wan2.2-TI2V's image conditioning): given frames that
encode to fewer latent frames than a chunk (an image is one latent frame) are not written into the
cache; the first chunk is generated with them held clean at timestep 0
(``stream_rollout(first_frames=...)``), as Wan2.2's pipeline masks the image latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from sfpp.codecs.base import VideoCodec
from sfpp.diffusion.prefix import hold_to_chunks

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "VideoPrefix", "encode_prefix", "fit_frames", "read_frames"]

#: File types read as one image, and as a video.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


@dataclass(frozen=True)
class VideoPrefix:
    """Given frames, encoded into whole chunks of latent frames.

    Attributes:
        source: Where the frames came from (the setting and the file).
        latents: Clean latents ``(1, C, n, h, w)``: ``n`` a multiple of the chunk size, or fewer
            than a chunk with ``in_first_chunk``.
        given_frames: Frames taken from the file.
        held_frames: Copies of the last given frame added to fill the last chunk (or latent frame).
        in_first_chunk: The latents condition the first generated chunk (held clean at timestep 0
            inside it) instead of being written into the cache as chunks of their own.
    """

    source: str
    latents: torch.Tensor
    given_frames: int
    held_frames: int
    in_first_chunk: bool = False

    @property
    def num_latent_frames(self) -> int:
        """Latent frames of the given frames."""
        return int(self.latents.shape[2])

    @property
    def written_latent_frames(self) -> int:
        """Latent frames written into the cache before generation (0 inside the first chunk)."""
        return 0 if self.in_first_chunk else self.num_latent_frames

    def describe(self) -> dict[str, object]:
        """The prefix's entry in the video's JSON."""
        entry: dict[str, object] = {
            "source": self.source,
            "given_frames": self.given_frames,
            "held_frames": self.held_frames,
            "latent_frames": self.num_latent_frames,
        }
        if self.in_first_chunk:
            entry["in_first_chunk"] = True
        return entry


def read_frames(path: str | Path, setting: str) -> torch.Tensor:
    """The frames of an image or a video file: ``(3, F, H, W)`` float32 in ``[-1, 1]``.

    Args:
        path: An image (:data:`IMAGE_SUFFIXES`, one frame) or a video (:data:`VIDEO_SUFFIXES`).
        setting: The setting that named the file (for the error messages).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: For another file type, or a file that cannot be read as one.
    """
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{setting}={file} does not exist")
    suffix = file.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise ValueError(
            f"{setting}={file}: not an image {IMAGE_SUFFIXES} or a video {VIDEO_SUFFIXES} by its suffix"
        )
    try:
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(file) as image:
                frames = np.asarray(image.convert("RGB"))[None]  # (1, H, W, 3)
        else:
            import imageio.v2 as imageio

            frames = np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(file, memtest=False)])
    except Exception as error:  # PIL and imageio raise many kinds; say which file and why
        raise ValueError(f"{setting}={file} cannot be read as {suffix[1:]}: {error}") from error
    if frames.ndim == 3:  # grey video frames (F, H, W)
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.shape[0] == 0:
        raise ValueError(f"{setting}={file} holds no frame")
    video = rearrange(torch.from_numpy(frames.astype(np.float32)), "f h w c -> c f h w")
    return video / 127.5 - 1.0


def fit_frames(frames: torch.Tensor, frame_size: tuple[int, int], setting: str) -> torch.Tensor:
    """Frames ``(3, F, H, W)`` at the student's ``frame_size``, reduced by an integer factor if enlarged.

    A video sfpp wrote with ``upscale=k`` has frames ``k`` times the student's size; each ``k x k``
    block is averaged back to one pixel. Any other size is refused (resizing would change what the
    student sees).

    Raises:
        ValueError: If the frames are not ``frame_size`` times a whole factor, the same in both axes.
    """
    height, width = frame_size
    got_h, got_w = frames.shape[-2:]
    factor = got_h // height
    if factor < 1 or got_h != factor * height or got_w != factor * width:
        raise ValueError(
            f"{setting}: frames of {got_h}x{got_w} do not fit frame_size=[{height}, {width}] (the same size, "
            f"or a whole multiple of it as sfpp writes with upscale); resize the file or set frame_size"
        )
    if factor == 1:
        return frames
    return F.avg_pool2d(frames, kernel_size=factor)  # (3, F, H*k, W*k) -> (3, F, H, W): F acts as the batch


def encode_prefix(
    codec: VideoCodec,
    frames: torch.Tensor,
    chunk_frames: int,
    source: str,
    device: torch.device | str = "cpu",
    in_first_chunk: bool = False,
) -> VideoPrefix:
    """Encode given frames ``(3, F, H, W)`` into whole chunks of latent frames.

    Args:
        codec: The student's codec.
        frames: Frames at the student's frame size, in ``[-1, 1]``.
        chunk_frames: Latent frames per chunk.
        source: Where the frames came from (for the JSON).
        device: Where the codec runs.
        in_first_chunk: Encode them into whole latent frames only, to condition the first chunk
            (Wan2.2-TI2V's image conditioning); they must then be fewer latent frames than a chunk.

    Returns:
        The prefix: ``ceil(latent frames / chunk) * chunk`` latent frames, the last given frame held
        to fill them (with ``in_first_chunk``: the latent frames that cover the given frames).

    Raises:
        ValueError: With ``in_first_chunk``, for frames that encode to a chunk or more.
    """
    given = int(frames.shape[1])
    unit = 1 if in_first_chunk else chunk_frames  # latent frames the given frames are held to
    clip, held = hold_to_chunks(frames[None], codec.temporal_stride, unit)  # (1, 3, F', H, W)
    latents = codec.encode(clip.to(device))  # (1, C, n, h, w)
    if in_first_chunk and latents.shape[2] >= chunk_frames:
        raise ValueError(
            f"{source}: {given} frames encode to {latents.shape[2]} latent frames, not fewer than a chunk "
            f"({chunk_frames}); only an image or a short clip conditions the first chunk (prefix_in_first_chunk), "
            "longer ones are continued as whole chunks"
        )
    return VideoPrefix(
        source=source, latents=latents, given_frames=given, held_frames=held, in_first_chunk=in_first_chunk
    )
