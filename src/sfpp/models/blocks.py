"""The layers of :class:`~sfpp.models.causal_wan.CausalWanDiT`: Wan2.1's attention, embeddings, block and head.

Parameter names follow the original Wan checkpoints, so those load unchanged. Every block takes
per-frame modulation ``(B, F, 6, dim)``: each latent frame carries its own noise level.

Order in this file: norms, attention, embeddings, block, head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from sfpp.models.attention import AttentionBackend
from sfpp.models.kv_cache import LayerCache
from sfpp.models.rope import apply_rope_rotation

__all__ = ["BlockCall", "CrossAttention", "SelfAttention", "WanBlock", "WanHead", "sinusoidal_embedding"]


@dataclass(frozen=True)
class BlockCall:
    """How the blocks of one model call run; the same for every block of the call.

    Args:
        backend: The attention backend (:mod:`sfpp.models.attention`).
        mask: The backend's mask for a full-sequence call; ``None`` for a cached call (the cache
            holds exactly the visible frames) or an unmasked one.
        write_cache: Store the chunk's self-attention keys and values in the layer's cache after
            attention (the clean pass of a rollout).
        cache_only: Compute and store only the keys and values and return the input unchanged
            (the last block of :meth:`~sfpp.models.causal_wan.CausalWanDiT.write_chunk`, whose
            output nothing reads). Implies writing.
    """

    backend: AttentionBackend
    mask: Any = None
    write_cache: bool = False
    cache_only: bool = False

    @property
    def writes(self) -> bool:
        """Whether the call stores keys and values in the cache."""
        return self.write_cache or self.cache_only


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as Wan does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` in float32 and cast back."""
        return super().forward(x.float()).type_as(x)


class FP32RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` in float32 and cast back."""
        return super().forward(x.float()).type_as(x)


# 1. Attention ---------------------------------------------------------------------------------


class _Projections(nn.Module):
    """Wan's attention parameters: q, k, v, o projections and RMS norms of q and k across heads.

    Args:
        dim: Model width.
        num_heads: Attention heads; ``dim`` must be divisible by it.
        eps: RMSNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = FP32RMSNorm(dim, eps=eps)
        self.norm_k = FP32RMSNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """Split the channels of ``x`` ``(B, L, dim)`` into heads: ``(B, L, H, D)``."""
        return rearrange(x, "b l (h d) -> b l h d", h=self.num_heads)


class SelfAttention(_Projections):
    """Multi-head self-attention with RMS q/k norm across heads and 3D RoPE."""

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, call: BlockCall, cache: LayerCache | None = None
    ) -> torch.Tensor:
        """Attend the tokens of ``x`` ``(B, L, dim)`` to themselves and, with a cache, to the past.

        With a cache (this layer's view of it), the chunk's keys follow the visible cached keys (no
        mask is needed: the cache holds exactly the visible frames) and, if ``call.write_cache``,
        are stored after attention. Without a graph to keep they are placed in the cache's buffer
        right after the visible prefix (one view, no copy of the window); with one, past and
        present are concatenated.
        """
        q = apply_rope_rotation(self._heads(self.norm_q(self.q(x))), rope)  # (B, L, H, D)
        k, v = self.keys_values(x, rope)
        keys, values = k, v
        if cache is not None:
            if k.requires_grad or v.requires_grad:
                past_k, past_v = cache.visible()
                keys, values = (
                    torch.cat([past_k, k], dim=1),
                    torch.cat([past_v, v], dim=1),
                )  # (B, Lpast + L, H, D)
            else:
                keys, values = cache.with_chunk(k, v)  # (B, Lpast + L, H, D), views of the buffer
        out = call.backend(q, keys, values, call.mask)  # (B, L, H, D)
        if cache is not None and call.write_cache:  # after attention: the chunk may overwrite visible slots
            cache.write(k.detach(), v.detach())
        return self.o(rearrange(out, "b l h d -> b l (h d)"))

    def keys_values(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (RMS-normed, RoPE applied) and values of the tokens ``x`` ``(B, L, dim)``, each ``(B, L, H, D)``."""
        k = self._heads(self.norm_k(self.k(x)))
        return apply_rope_rotation(k, rope), self._heads(self.v(x))


class CrossAttention(_Projections):
    """Multi-head attention from video tokens to text tokens, with RMS q/k norm."""

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded text ``(B, Lt, dim)``, each ``(B, Lt, H, D)``."""
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def forward(
        self, x: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor], backend: AttentionBackend
    ) -> torch.Tensor:
        """Attend ``x`` ``(B, L, dim)`` to precomputed text keys and values."""
        out = backend(self._heads(self.norm_q(self.q(x))), *text_kv)  # (B, L, H, D)
        return self.o(rearrange(out, "b l h d -> b l (h d)"))


# 2. Embeddings --------------------------------------------------------------------------------


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Wan's sinusoidal timestep embedding, ``[cos, sin]`` halves, computed in float32.

    Args:
        timesteps: Any shape, on the 0..1000 scale.
        dim: Embedding channels (even).
        max_period: Longest period of the sinusoids.

    Returns:
        ``timesteps.shape + (dim,)`` float32 tensor.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[..., None] * exponent.exp()  # (..., half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with per-frame modulation, in float32.

    Args:
        x: ``(B, L, dim)`` tokens, frame-major, ``L = num_frames * tokens_per_frame``.
        shift: ``(B, F, dim)``.
        scale: ``(B, F, dim)``.
        num_frames: ``F``.

    Returns:
        ``(B, L, dim)`` float32.
    """
    # A view by frame to broadcast the per-frame modulation (the tokens keep their meaning; a plain
    # unflatten, as this runs 4 times per block on the streaming path).
    frames = x.float().unflatten(1, (num_frames, -1))  # (B, F, T, dim)
    out = torch.addcmul(shift.unsqueeze(2), frames, 1 + scale.unsqueeze(2))  # (B, F, T, dim)
    return out.flatten(1, 2)  # (B, L, dim)


def _gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``x + y * gate`` with a per-frame gate ``(B, F, dim)``, in float32, cast back to ``x``'s dtype.

    Args:
        x: ``(B, L, dim)`` residual stream, frame-major.
        y: ``(B, L, dim)`` branch output.
        gate: ``(B, F, dim)``.
        num_frames: ``F``.

    Returns:
        ``(B, L, dim)`` in ``x``'s dtype.
    """
    frames = x.float().unflatten(1, (num_frames, -1))  # (B, F, T, dim), a view by frame as in _modulate
    out = torch.addcmul(frames, y.float().unflatten(1, (num_frames, -1)), gate.unsqueeze(2))  # (B, F, T, dim)
    return out.flatten(1, 2).type_as(x)  # (B, L, dim)


# 3. Block -------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """One Wan2.1 transformer block (original Wan parameter names), which knows its layer index.

    ``norm1`` precedes self-attention, ``norm3`` cross-attention (affine, or identity without
    ``cross_attn_norm``) and ``norm2`` the feed-forward, as in the original checkpoints.

    Args:
        layer: The block's index in the model; a cached call must bring this layer's cache view.
        dim: Model width.
        ffn_dim: Feed-forward hidden width.
        num_heads: Attention heads.
        eps: Norm epsilon.
        cross_attn_norm: Whether cross-attention gets an affine LayerNorm.
    """

    def __init__(
        self, layer: int, dim: int, ffn_dim: int, num_heads: int, eps: float, cross_attn_norm: bool
    ) -> None:
        super().__init__()
        self.layer = layer
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        rope: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        call: BlockCall,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, L, dim)`` with per-frame modulation ``(B, F, 6, dim)``.

        Args:
            x: Tokens, frame-major.
            time_mod: Per-frame modulation ``(B, F, 6, dim)``.
            rope: RoPE rotation of the tokens (see :func:`~sfpp.models.rope.rope_rotation`).
            text_kv: This block's cross-attention keys and values of the text.
            call: Backend, mask and cache options of the call.
            cache: This layer's view of the rolling KV cache (``cache.layer == self.layer``), for a
                cached call.

        With ``call.cache_only`` only the self-attention keys and values of ``x`` are computed and
        stored, the same ones as with ``write_cache``, and ``x`` is returned unchanged. (An option
        of ``forward`` rather than a method of its own, so FSDP2's parameter gathering hooks run.)

        Raises:
            ValueError: For another layer's cache view, or ``cache_only`` without a cache.
        """
        if cache is not None and cache.layer != self.layer:
            raise ValueError(f"block {self.layer} was given the cache view of layer {cache.layer}")
        num_frames = time_mod.shape[1]
        mod = self.modulation.unsqueeze(0).float() + time_mod.float()  # (B, F, 6, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)  # each (B, F, dim)

        # 1. Self-attention
        h = _modulate(self.norm1(x), shift_sa, scale_sa, num_frames).type_as(x)
        if call.cache_only:
            if cache is None:
                raise ValueError("cache_only needs a KV cache")
            k, v = self.self_attn.keys_values(h, rope)
            cache.write(k.detach(), v.detach())
            return x
        y = self.self_attn(h, rope, call, cache)
        x = _gated_residual(x, y, gate_sa, num_frames)

        # 2. Cross-attention
        x = x + self.cross_attn(self.norm3(x), text_kv, call.backend)

        # 3. Feed-forward
        h = _modulate(self.norm2(x), shift_ff, scale_ff, num_frames).type_as(x)
        y = self.ffn(h)
        return _gated_residual(x, y, gate_ff, num_frames)


class WanHead(nn.Module):
    """Modulated output projection back to patches.

    Args:
        dim: Model width.
        out_features: ``out_channels * prod(patch_size)``.
        eps: Norm epsilon.
    """

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """Project ``x`` ``(B, L, dim)`` with the per-frame time embedding ``(B, F, dim)``.

        Under autocast the projection runs in the weight's dtype (float32 master weights), as in
        Wan's own code: a bf16 head would round the clean estimate (and the flow derived from it)
        to bf16's ~3 significant digits.
        """
        mod = self.modulation.unsqueeze(0).float() + time_emb.float().unsqueeze(2)  # (B, F, 2, dim)
        shift, scale = mod.unbind(2)  # each (B, F, dim)
        modulated = _modulate(self.norm(x), shift, scale, time_emb.shape[1])  # (B, L, dim)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.head(modulated.to(self.head.weight.dtype))
        return self.head(modulated.type_as(x))
