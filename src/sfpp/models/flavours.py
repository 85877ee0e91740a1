"""Size registry of CausalWanDiT: a debug flavour for tests, the toy world's, Wan2.1's and Wan2.2's sizes.

The registry is data: each flavour is a :class:`~sfpp.models.config.CausalWanConfig`
(bidirectional by default). :func:`sfpp.models.causal_wan.build_model` builds a model from one, with
any field overridden (``build_model("tiny", num_layers=1)``); this module imports no model.
"""

from __future__ import annotations

from typing import Any

from sfpp.models.config import CausalWanConfig

__all__ = ["FLAVOURS", "flavour_config"]

FLAVOURS: dict[str, CausalWanConfig] = {
    # Unit tests: a few thousand parameters, runs in milliseconds.
    "tiny": CausalWanConfig(
        patch_size=(1, 2, 2),
        in_channels=4,
        out_channels=4,
        dim=32,
        ffn_dim=64,
        num_layers=2,
        num_heads=2,
        text_dim=16,
        freq_dim=32,
    ),
    # The built-in procedural world: 16x16 RGB frames as 4x4 patches -> 16 tokens per frame, ~4M parameters.
    "toy": CausalWanConfig(
        patch_size=(1, 4, 4),
        in_channels=3,
        out_channels=3,
        dim=256,
        ffn_dim=768,
        num_layers=4,
        num_heads=4,
        text_dim=64,
        freq_dim=64,
    ),
    # Wan2.1-T2V-1.3B.
    "wan_1_3b": CausalWanConfig(
        patch_size=(1, 2, 2),
        in_channels=16,
        out_channels=16,
        dim=1536,
        ffn_dim=8960,
        num_layers=30,
        num_heads=12,
        text_dim=4096,
        freq_dim=256,
        eps=1e-6,
        cross_attn_norm=True,
    ),
    # Wan2.2-TI2V-5B: text- and image-to-video in one model, on the 48-channel latents of the Wan2.2
    # VAE (16x16 pixels per latent, 4 frames per latent frame). The blocks are Wan2.1's; what makes
    # it image-to-video is its input: a clean first latent frame at timestep 0.
    "wan2_2_ti2v_5b": CausalWanConfig(
        patch_size=(1, 2, 2),
        in_channels=48,
        out_channels=48,
        dim=3072,
        ffn_dim=14336,
        num_layers=30,
        num_heads=24,
        text_dim=4096,
        freq_dim=256,
        eps=1e-6,
        cross_attn_norm=True,
    ),
    # Wan2.1-T2V-14B.
    "wan_14b": CausalWanConfig(
        patch_size=(1, 2, 2),
        in_channels=16,
        out_channels=16,
        dim=5120,
        ffn_dim=13824,
        num_layers=40,
        num_heads=40,
        text_dim=4096,
        freq_dim=256,
        eps=1e-6,
        cross_attn_norm=True,
    ),
}


def flavour_config(flavour: str, **overrides: Any) -> CausalWanConfig:
    """The config of a registered flavour, with fields overridden.

    Raises:
        ValueError: For an unknown flavour (listing the registered ones) or an unknown field.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown model flavour {flavour!r}; registered flavours: {sorted(FLAVOURS)}")
    return FLAVOURS[flavour].replace(**overrides)
