"""A DMD window cut from a long rollout, made to start the way the teacher's clips start.

Wan's causal VAE encodes the first latent frame of a clip from one pixel frame (an *image* latent)
and every later latent frame from four. A window of ``K`` latent frames cut from the middle of a
long rollout starts with a four-frame latent, which the bidirectional teacher never saw in first
position. :class:`WindowReencoder` (``mode="reencode"``, as Self-Forcing's training code does)
decodes the rollout up to the window's first latent frame, takes the last pixel frame and encodes
it alone: that image latent replaces the window's first frame. The window's first chunk can be
kept out of the generator's gradient (``mask_first_chunk``): its first frame no longer is what the
generator produced. ``mode="as_is"`` feeds the window unchanged (the Self-Forcing++ paper reports
needing no latent-frame masking; the setting lets users compare). For a codec without a temporal
stride (the pixel codec of the built-in world) every latent frame is one pixel frame and the
re-encoding is skipped: the window comes back unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sfpp.codecs.base import VideoCodec

__all__ = ["WINDOW_MODES", "WindowReencoder"]

#: What :class:`WindowReencoder` does with a window that does not start the rollout.
WINDOW_MODES: tuple[str, ...] = ("reencode", "as_is")


class WindowReencoder:
    """Give a window taken inside a rollout an image latent as its first frame.

    Args:
        mode: ``reencode`` or ``as_is`` (see the module docstring).
        mask_first_chunk: Detach the re-encoded window's first chunk, so the generator gets no
            gradient through it (only with ``reencode``).

    Raises:
        ValueError: For an unknown mode.
    """

    def __init__(self, mode: str = "reencode", mask_first_chunk: bool = True) -> None:
        if mode not in WINDOW_MODES:
            raise ValueError(f"unknown window mode {mode!r}; choose one of {WINDOW_MODES}")
        self.mode = mode
        self.mask_first_chunk = mask_first_chunk

    def applies(self, codec: VideoCodec, window_start: int) -> bool:
        """Whether a window starting at latent frame ``window_start`` is re-encoded with ``codec``."""
        return self.mode == "reencode" and codec.temporal_stride > 1 and window_start > 0

    def gradient_mask(
        self, codec: VideoCodec, window_start: int, window_frames: int, chunk: int, device: torch.device | str
    ) -> Tensor | None:
        """Which frames of a window starting at ``window_start`` the DMD loss applies to.

        Returns:
            A boolean ``(1, 1, window_frames, 1, 1)`` mask, false on the first ``chunk`` frames,
            when the window is re-encoded with ``mask_first_chunk``; otherwise ``None`` (every
            frame). Pass it to :func:`~sfpp.diffusion.losses.dmd_loss`, whose mean then runs over
            the frames that keep their graph.
        """
        if not (self.mask_first_chunk and self.applies(codec, window_start)):
            return None
        mask = torch.ones(1, 1, window_frames, 1, 1, dtype=torch.bool, device=device)  # (1, 1, K, 1, 1)
        mask[:, :, :chunk] = False
        return mask

    def __call__(self, prefix: Tensor, window: Tensor, codec: VideoCodec, chunk: int) -> Tensor:
        """The window ``(B, C, K, h, w)`` as the teacher and the critic should see it.

        Args:
            prefix: The rollout's latent frames before the window ``(B, C, s, h, w)`` (no graph needed;
                ``s = 0`` for a window at the start).
            window: The window's latent frames ``(B, C, K, h, w)``, with the generator's graph.
            codec: The latents' codec.
            chunk: Latent frames per chunk of the generator (the part of the window masked).

        Returns:
            The window, unchanged when :meth:`applies` is false; otherwise its first frame is the
            encoding of the last pixel frame of ``prefix + window[:, :, :1]``, and with
            ``mask_first_chunk`` its first ``chunk`` frames carry no graph.
        """
        if not self.applies(codec, prefix.shape[2]):
            return window
        with torch.no_grad():
            upto_first = torch.cat([prefix, window[:, :, :1]], dim=2).detach()  # (B, C, s + 1, h, w)
            last_pixel = codec.decode(upto_first)[:, :, -1:]  # (B, 3, 1, H, W): its last pixel frame
            image_latent = codec.encode(last_pixel).to(window.dtype)  # (B, C, 1, h, w)
        reencoded = torch.cat([image_latent, window[:, :, 1:]], dim=2)  # (B, C, K, h, w)
        if self.mask_first_chunk:
            reencoded = torch.cat([reencoded[:, :, :chunk].detach(), reencoded[:, :, chunk:]], dim=2)
        return reencoded

    def __repr__(self) -> str:
        return f"WindowReencoder(mode={self.mode!r}, mask_first_chunk={self.mask_first_chunk})"
