"""The sizes the GPU check runs at (:mod:`sfpp.apps.gpu_check`, :mod:`sfpp.apps.gpu_speed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SHAPES", "WAN_VAE", "CheckShapes"]


@dataclass(frozen=True)
class CheckShapes:
    """The sizes of one check (``full`` on a GPU, ``rehearsal`` on a CPU)."""

    flavour: str
    latent_height: int
    latent_width: int
    chunk_frames: int
    window_frames: int
    steps: tuple[int, ...]
    text_len: int
    stream_chunks: int
    warmup_chunks: int
    dmd_layers: int | None
    dmd_updates: int
    matmul_size: int
    vae: dict[str, Any]
    model_overrides: dict[str, Any]


#: Wan2.1's VAE (``AutoencoderKLWan`` defaults: 16 latent channels, base width 96).
WAN_VAE = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)
SHAPES: dict[str, CheckShapes] = {
    "full": CheckShapes(
        flavour="wan_1_3b",
        latent_height=60,
        latent_width=104,
        chunk_frames=3,
        window_frames=21,
        steps=(1000, 750, 500, 250),
        text_len=512,
        stream_chunks=10,
        warmup_chunks=2,
        dmd_layers=None,
        dmd_updates=4,
        matmul_size=8192,
        vae=WAN_VAE,
        model_overrides={},
    ),
    "rehearsal": CheckShapes(
        flavour="tiny",
        latent_height=8,
        latent_width=8,
        chunk_frames=3,
        window_frames=9,
        steps=(1000, 750, 500, 250),
        text_len=8,
        stream_chunks=10,
        warmup_chunks=1,
        dmd_layers=None,
        dmd_updates=4,
        matmul_size=256,
        vae=dict(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[True, True],
        ),
        model_overrides={},
    ),
}
