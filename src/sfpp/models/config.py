"""CausalWanConfig: every setting of a :class:`~sfpp.models.causal_wan.CausalWanDiT`, in one object.

The size flavours (:mod:`sfpp.models.flavours`), both Wan checkpoint formats
(:mod:`sfpp.models.wan.configs`), saving and loading produce or consume this one dataclass, and a
built model keeps it as ``model.config``. Its fields split in two:

* the architecture (:data:`ARCHITECTURE_FIELDS`): what a checkpoint's ``config.json`` stores and
  what the weights' shapes depend on;
* the build options (:data:`BUILD_FIELDS`): bidirectional or block-causal, the chunk size, the
  attention backend and the ``x0 -> flow`` floor, chosen again each time a model is built (the same
  weights serve as a bidirectional teacher and as a causal student).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ARCHITECTURE_FIELDS", "BUILD_FIELDS", "NUM_TRAIN_TIMESTEPS", "CausalWanConfig", "config_of"]

#: Wan2.1's timestep scale: a model is called at ``t = sigma * NUM_TRAIN_TIMESTEPS`` (no shift).
NUM_TRAIN_TIMESTEPS = 1000

PREDICTION_TYPES = ("flow", "x0")


@dataclass(frozen=True)
class CausalWanConfig:
    """Settings of a Wan2.1 DiT with per-frame timesteps and optional block-causal attention.

    The defaults are Wan2.1-T2V-1.3B's architecture, bidirectional.

    Args:
        patch_size: ``(p_t, p_h, p_w)``; ``p_t`` must be 1 so each token belongs to one frame.
        in_channels: Latent channels in.
        out_channels: Channels predicted (the flow, in Wan's parameterisation).
        dim: Model width.
        ffn_dim: Feed-forward hidden width.
        num_layers: Transformer blocks.
        num_heads: Attention heads; ``dim`` must be divisible by it.
        text_dim: Width of the text encoder's embeddings.
        freq_dim: Channels of the sinusoidal timestep embedding.
        eps: Norm epsilon.
        cross_attn_norm: Affine LayerNorm before cross-attention.
        rope_max_seq_len: RoPE table length per axis (frames, rows, columns).
        prediction_type: What the head's raw output means. ``flow`` (Wan2.1): the flow itself.
            ``x0``: the clean latents, converted to the flow ``(x_t - x0) / sigma`` before returning,
            so callers always receive a flow. Small models learn much faster predicting ``x0``;
            Wan checkpoints are ``flow``.
        causal: Block-causal over chunks (student) instead of bidirectional (teacher, critic).
        num_frames_per_chunk: Latent frames per chunk when ``causal``.
        attention_backend: ``auto``, ``flash``, ``flex`` or ``sdpa`` (see :mod:`sfpp.models.attention`).
        min_sigma: Floor of ``sigma`` in the ``x0 -> flow`` conversion (the clean pass at
            ``t = 0`` returns a finite, unused flow).

    Raises:
        ValueError: For an unknown ``prediction_type``, an ``x0`` prediction with
            ``out_channels != in_channels``, a patch size that mixes frames, or ``dim`` not divisible
            by ``num_heads``.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 16
    out_channels: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_layers: int = 30
    num_heads: int = 12
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_max_seq_len: int = 1024
    prediction_type: str = "flow"
    causal: bool = field(default=False, metadata={"build": True})
    num_frames_per_chunk: int = field(default=3, metadata={"build": True})
    attention_backend: str = field(default="auto", metadata={"build": True})
    min_sigma: float = field(default=1e-3, metadata={"build": True})

    def __post_init__(self) -> None:
        patch = tuple(int(p) for p in self.patch_size)
        object.__setattr__(self, "patch_size", patch)
        if len(patch) != 3 or patch[0] != 1:
            raise ValueError(
                f"patch_size must be (1, p_h, p_w) so tokens belong to one frame, got {self.patch_size}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be 'flow' or 'x0', got {self.prediction_type!r}")
        if self.prediction_type == "x0" and self.in_channels != self.out_channels:
            raise ValueError("prediction_type='x0' needs out_channels == in_channels")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    def architecture(self) -> dict[str, Any]:
        """The architecture fields as a JSON-serialisable dict (what ``config.json`` stores)."""
        out = {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}
        out["patch_size"] = list(self.patch_size)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-serialisable dict."""
        return {**self.architecture(), **{name: getattr(self, name) for name in BUILD_FIELDS}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CausalWanConfig:
        """A config from a dict of fields; missing fields take the defaults.

        Raises:
            ValueError: For keys that are not fields (listed with the known ones).
        """
        _check_fields(values, "CausalWanConfig")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> CausalWanConfig:
        """A copy with some fields changed (validated again).

        Raises:
            ValueError: For names that are not fields.
        """
        _check_fields(changes, "CausalWanConfig.replace")
        return dataclasses.replace(self, **changes)

    def with_build(self, **options: Any) -> CausalWanConfig:
        """A copy with build options changed; architecture fields are refused here.

        Raises:
            ValueError: For names that are not build options.
        """
        wrong = sorted(set(options) - set(BUILD_FIELDS))
        if wrong:
            raise ValueError(f"{wrong} are not build options; the build options are {list(BUILD_FIELDS)}")
        return dataclasses.replace(self, **options)


def _check_fields(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(CausalWanConfig)})
    if unknown:
        known = [f.name for f in dataclasses.fields(CausalWanConfig)]
        raise ValueError(
            f"unknown CausalWanDiT arguments {unknown} (in {where}); the CausalWanConfig fields are {known}"
        )


#: Fields that describe the architecture: stored in ``config.json``, fixed by the weights' shapes.
ARCHITECTURE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CausalWanConfig) if not f.metadata.get("build")
)
#: Fields chosen when a model is built from an architecture.
BUILD_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CausalWanConfig) if f.metadata.get("build")
)


def config_of(module: Any) -> CausalWanConfig | None:
    """The :class:`CausalWanConfig` a model keeps as ``config``, or ``None`` for another module."""
    config = getattr(module, "config", None)
    return config if isinstance(config, CausalWanConfig) else None
