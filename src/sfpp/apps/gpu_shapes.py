"""The sizes the GPU check runs at (:mod:`sfpp.apps.gpu_check`, :mod:`sfpp.apps.gpu_speed`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["MODELS", "SHAPES", "WAN2_2_VAE", "WAN_VAE", "CheckShapes", "shapes_for"]


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
#: Wan2.2's VAE (Wan2.2-TI2V-5B's ``vae/config.json``: 48 latent channels, 2x2 patching, residual blocks).
WAN2_2_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
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
# Wan2.2-TI2V-5B: 1280x704 = 44x80 latents of 48 channels, a 30-frame horizon in chunks of 3; its
# rehearsal: the tiny model on 48 channels and a tiny VAE of the Wan2.2 kind.
SHAPES["full_5b"] = replace(
    SHAPES["full"],
    flavour="wan2_2_ti2v_5b",
    latent_height=44,
    latent_width=80,
    window_frames=30,
    vae=WAN2_2_VAE,
)
SHAPES["rehearsal_5b"] = replace(
    SHAPES["rehearsal"],
    latent_height=4,
    latent_width=4,
    vae={**SHAPES["rehearsal"].vae, "decoder_base_dim": 12, "z_dim": 48, "is_residual": True, "in_channels": 12,
         "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 8},
    model_overrides={"in_channels": 48, "out_channels": 48},
)  # fmt: skip

#: The models the check can take, and their ``(full, rehearsal)`` shapes.
MODELS: dict[str, tuple[str, str]] = {"1.3b": ("full", "rehearsal"), "5b": ("full_5b", "rehearsal_5b")}


def shapes_for(model: str, rehearsal: bool) -> tuple[str, CheckShapes]:
    """``(name, shapes)`` of the check of ``model`` (``1.3b``: Wan2.1-T2V-1.3B, ``5b``: Wan2.2-TI2V-5B).

    Raises:
        ValueError: For another model.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} for the GPU check; choose one of {sorted(MODELS)}")
    name = MODELS[model][1 if rehearsal else 0]
    return name, SHAPES[name]
