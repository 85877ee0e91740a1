"""3D rotary position embedding (Wan2.1 layout) with an absolute frame offset.

Wan splits each attention head's channels into three parts, one per axis (frame, row, column):
``h = w = 2 * (head_dim // 6)`` channels for the two spatial axes and the rest for time. Channels
are rotated in interleaved pairs ``(x[2i], x[2i + 1])``. Unlike diffusers' ``WanRotaryPosEmbed``,
:class:`Rope3D` takes the absolute index of the first frame, so a chunk generated late in a long
rollout gets the same positions it would have in a full-sequence forward.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Rope3D", "apply_rope", "apply_rope_rotation", "rope_axis_dims", "rope_rotation"]


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head dimension into (frame, height, width) RoPE channels as Wan does.

    Args:
        head_dim: Channels per attention head; must be even and at least 6.

    Returns:
        The channel counts ``(t_dim, h_dim, w_dim)``, each even, summing to ``head_dim``.

    Raises:
        ValueError: If ``head_dim`` cannot be split into three even parts.
    """
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {head_dim}")
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    return t_dim, h_dim, w_dim


def _angle_table(dim: int, max_seq_len: int, theta: float) -> torch.Tensor:
    """Rotation angles ``pos * theta^(-2i/dim)`` for positions ``0..max_seq_len-1``.

    Returns:
        Float64 tensor of shape ``(max_seq_len, dim // 2)``.
    """
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
    positions = torch.arange(max_seq_len, dtype=torch.float64)
    return torch.outer(positions, inv_freq)


class Rope3D(nn.Module):
    """Precomputed cos/sin tables for 3D RoPE over (frame, row, column) token grids.

    Args:
        head_dim: Channels per attention head.
        max_seq_len: Size of the position table on every axis (Wan: 1024). A frame index at or
            beyond it raises an error instead of silently wrapping.
        theta: RoPE base.
    """

    def __init__(self, head_dim: int, max_seq_len: int = 1024, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.axis_dims = rope_axis_dims(head_dim)
        for name, dim in zip(("t", "h", "w"), self.axis_dims, strict=True):
            angles = _angle_table(dim, max_seq_len, theta)
            self.register_buffer(f"cos_{name}", angles.cos().float(), persistent=False)
            self.register_buffer(f"sin_{name}", angles.sin().float(), persistent=False)

    def forward(
        self, frame_offset: int, num_frames: int, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos and sin for a grid of ``num_frames x height x width`` tokens starting at a frame.

        Args:
            frame_offset: Absolute index of the first frame of the grid.
            num_frames: Frames in the grid (after temporal patching).
            height: Token rows per frame.
            width: Token columns per frame.

        Returns:
            ``(cos, sin)``, each of shape ``(num_frames * height * width, head_dim // 2)``, in
            frame-major token order (the order of ``flatten`` over (F, H, W)).

        Raises:
            ValueError: If any position falls outside the table.
        """
        last_frame = frame_offset + num_frames
        if frame_offset < 0 or last_frame > self.max_seq_len:
            raise ValueError(
                f"frames [{frame_offset}, {last_frame}) are outside the RoPE table of {self.max_seq_len} "
                "positions; generate fewer frames or raise the model's `rope_max_seq_len`"
            )
        if height > self.max_seq_len or width > self.max_seq_len:
            raise ValueError(
                f"a {height}x{width} token grid exceeds the RoPE table of {self.max_seq_len} positions; "
                "raise the model's `rope_max_seq_len`"
            )
        tables = []
        for table in ("cos", "sin"):
            t = getattr(self, f"{table}_t")[frame_offset:last_frame]
            h = getattr(self, f"{table}_h")[:height]
            w = getattr(self, f"{table}_w")[:width]
            grid = torch.cat(
                [
                    t[:, None, None, :].expand(num_frames, height, width, -1),
                    h[None, :, None, :].expand(num_frames, height, width, -1),
                    w[None, None, :, :].expand(num_frames, height, width, -1),
                ],
                dim=-1,
            )  # (F, H, W, head_dim // 2)
            tables.append(grid.reshape(num_frames * height * width, -1))  # (L, head_dim // 2)
        return tables[0], tables[1]


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotations of :class:`Rope3D`'s tables as unit complex numbers, ready to broadcast.

    Build it once per forward and rotate every layer's queries and keys with
    :func:`apply_rope_rotation` (one complex product each instead of a handful of real ops).

    Args:
        cos: ``(L, head_dim // 2)``.
        sin: ``(L, head_dim // 2)``.

    Returns:
        Complex64 ``(1, L, 1, head_dim // 2)``: ``cos + i sin``.
    """
    return torch.complex(cos.float(), sin.float())[None, :, None, :]  # (1, L, 1, head_dim // 2)


def apply_rope_rotation(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(x[2i], x[2i + 1])`` of queries or keys.

    Each pair is read as the complex number ``x[2i] + i x[2i + 1]`` and multiplied by its rotation:
    ``(x[2i] cos - x[2i + 1] sin, x[2i] sin + x[2i + 1] cos)``.

    Args:
        x: ``(B, L, num_heads, head_dim)``.
        rotation: From :func:`rope_rotation`, ``(1, L, 1, head_dim // 2)``.

    Returns:
        Rotated tensor of the same shape and dtype as ``x`` (computed in float32).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, L, H, head_dim // 2)
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)  # (B, L, H, head_dim)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of queries or keys with :class:`Rope3D`'s tables.

    Args:
        x: ``(B, L, num_heads, head_dim)``.
        cos: ``(L, head_dim // 2)`` from :class:`Rope3D`.
        sin: ``(L, head_dim // 2)`` from :class:`Rope3D`.

    Returns:
        Rotated tensor of the same shape and dtype as ``x`` (computed in float32).
    """
    return apply_rope_rotation(x, rope_rotation(cos, sin))
