"""CausalWanDiT: the Wan2.1 text-to-video transformer, bidirectional or block-causal, with a KV cache.

The architecture is Wan2.1's: a 3D patch embedding, a text projection, a sinusoidal timestep
embedding turned into 6-way adaLN modulation (plus a learned ``modulation`` table per block),
self-attention with RMS q/k norm and 3D RoPE, cross-attention to the text, a GELU feed-forward and
a modulated output head. Parameter names follow the original Wan checkpoints, so those load
unchanged; :mod:`sfpp.models.wan_weights` maps diffusers-format checkpoints onto them.

What this module adds to Wan:

* per-frame timesteps ``(B, F)``: each latent frame carries its own noise level;
* one class for bidirectional attention (teacher, critic) and block-causal attention over chunks of
  ``num_frames_per_chunk`` latent frames (student);
* two forwards sharing the same block code: a full-sequence forward under a frame attention
  pattern (training), and a cached chunk forward that attends to a
  :class:`~sfpp.models.kv_cache.RollingKVCache` (streaming rollout).

Order in this file: attention, embeddings, block, model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sfpp.models.attention import AttentionBackend, build_attention_backend
from sfpp.models.frame_mask import FrameAttentionPattern
from sfpp.models.kv_cache import RollingKVCache
from sfpp.models.rope import Rope3D, apply_rope_rotation, rope_rotation

__all__ = ["CausalWanDiT", "WanBlock", "sinusoidal_embedding"]


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


class SelfAttention(_Projections):
    """Multi-head self-attention with RMS q/k norm across heads and 3D RoPE."""

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        backend: AttentionBackend,
        mask: Any,
        cache: RollingKVCache | None,
        layer: int,
        write_cache: bool,
    ) -> torch.Tensor:
        """Attend the tokens of ``x`` ``(B, L, dim)`` to themselves and, with a cache, to the past.

        With a cache, the chunk's keys follow the visible cached keys (no mask is needed: the cache
        holds exactly the visible frames) and, if ``write_cache``, are stored after attention. Without
        a graph to keep they are placed in the cache's buffer right after the visible prefix (one
        view, no copy of the window); with one, past and present are concatenated.
        """
        q = self.norm_q(self.q(x)).unflatten(2, (self.num_heads, -1))  # (B, L, H, D)
        q = apply_rope_rotation(q, rope)
        k, v = self.keys_values(x, rope)
        keys, values = k, v
        if cache is not None:
            if k.requires_grad or v.requires_grad:
                past_k, past_v = cache.visible(layer)
                keys, values = (
                    torch.cat([past_k, k], dim=1),
                    torch.cat([past_v, v], dim=1),
                )  # (B, Lpast + L, H, D)
            else:
                keys, values = cache.with_chunk(layer, k, v)  # (B, Lpast + L, H, D), views of the buffer
        out = backend(q, keys, values, mask)  # (B, L, H, D)
        if cache is not None and write_cache:  # after attention: the chunk may overwrite visible slots
            cache.write(layer, k.detach(), v.detach())
        return self.o(out.flatten(2))  # (B, L, dim)

    def keys_values(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (RMS-normed, RoPE applied) and values of the tokens ``x`` ``(B, L, dim)``, each ``(B, L, H, D)``."""
        k = self.norm_k(self.k(x)).unflatten(2, (self.num_heads, -1))  # (B, L, H, D)
        v = self.v(x).unflatten(2, (self.num_heads, -1))  # (B, L, H, D)
        return apply_rope_rotation(k, rope), v


class CrossAttention(_Projections):
    """Multi-head attention from video tokens to text tokens, with RMS q/k norm."""

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded text ``(B, Lt, dim)``, each ``(B, Lt, H, D)``."""
        k = self.norm_k(self.k(context)).unflatten(2, (self.num_heads, -1))  # (B, Lt, H, D)
        v = self.v(context).unflatten(2, (self.num_heads, -1))  # (B, Lt, H, D)
        return k, v

    def forward(
        self, x: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor], backend: AttentionBackend
    ) -> torch.Tensor:
        """Attend ``x`` ``(B, L, dim)`` to precomputed text keys and values."""
        q = self.norm_q(self.q(x)).unflatten(2, (self.num_heads, -1))  # (B, L, H, D)
        out = backend(q, *text_kv)  # (B, L, H, D)
        return self.o(out.flatten(2))  # (B, L, dim)


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
    frames = x.float().unflatten(1, (num_frames, -1))  # (B, F, T, dim)
    out = torch.addcmul(frames, y.float().unflatten(1, (num_frames, -1)), gate.unsqueeze(2))  # (B, F, T, dim)
    return out.flatten(1, 2).type_as(x)  # (B, L, dim)


# 3. Block -------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """One Wan2.1 transformer block (original Wan parameter names).

    ``norm1`` precedes self-attention, ``norm3`` cross-attention (affine, or identity without
    ``cross_attn_norm``) and ``norm2`` the feed-forward, as in the original checkpoints.

    Args:
        dim: Model width.
        ffn_dim: Feed-forward hidden width.
        num_heads: Attention heads.
        eps: Norm epsilon.
        cross_attn_norm: Whether cross-attention gets an affine LayerNorm.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, cross_attn_norm: bool) -> None:
        super().__init__()
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
        backend: AttentionBackend,
        mask: Any,
        cache: RollingKVCache | None,
        layer: int,
        write_cache: bool,
        cache_only: bool = False,
    ) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, L, dim)`` with per-frame modulation ``(B, F, 6, dim)``.

        With ``cache_only`` (and a cache), only the self-attention keys and values of ``x`` are
        computed and stored, the same ones as with ``write_cache``, and ``x`` is returned unchanged:
        the pass that writes a chunk into the cache never reads the last block's output. (A flag of
        ``forward`` rather than a method of its own, so FSDP2's parameter gathering hooks run.)
        """
        num_frames = time_mod.shape[1]
        mod = self.modulation.unsqueeze(0).float() + time_mod.float()  # (B, F, 6, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)  # each (B, F, dim)

        # 1. Self-attention
        h = _modulate(self.norm1(x), shift_sa, scale_sa, num_frames).type_as(x)
        if cache_only:
            if cache is None:
                raise ValueError("cache_only needs a KV cache")
            k, v = self.self_attn.keys_values(h, rope)
            cache.write(layer, k.detach(), v.detach())
            return x
        y = self.self_attn(h, rope, backend, mask, cache, layer, write_cache)
        x = _gated_residual(x, y, gate_sa, num_frames)

        # 2. Cross-attention
        x = x + self.cross_attn(self.norm3(x), text_kv, backend)

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


# 4. Model -------------------------------------------------------------------------------------


class CausalWanDiT(nn.Module):
    """Wan2.1 DiT with per-frame timesteps, block-causal attention and a rolling-cache forward.

    Args:
        patch_size: ``(p_t, p_h, p_w)``; ``p_t`` must be 1 so each token belongs to one frame.
        in_channels: Latent channels in.
        out_channels: Channels predicted (the flow, in Wan's parameterisation).
        dim: Model width.
        ffn_dim: Feed-forward hidden width.
        num_layers: Transformer blocks.
        num_heads: Attention heads.
        text_dim: Width of the text encoder's embeddings.
        freq_dim: Channels of the sinusoidal timestep embedding.
        eps: Norm epsilon.
        cross_attn_norm: Affine LayerNorm before cross-attention.
        rope_max_seq_len: RoPE table length per axis (frames, rows, columns).
        causal: Block-causal over chunks (student) instead of bidirectional (teacher, critic).
        num_frames_per_chunk: Latent frames per chunk when ``causal``.
        attention_backend: ``auto``, ``flash``, ``flex`` or ``sdpa`` (see :mod:`sfpp.models.attention`).
        prediction_type: What the head's raw output means. ``flow`` (Wan2.1): the flow itself.
            ``x0``: the clean latents, converted to the flow ``(x_t - x0) / sigma`` before returning,
            so callers always receive a flow. Small models learn much faster predicting ``x0``
            (the built-in world's teacher uses it); Wan checkpoints are ``flow``.
        min_sigma: Floor of ``sigma`` in the ``x0 -> flow`` conversion (the clean pass at
            ``t = 0`` returns a finite, unused flow).
    """

    _no_split_modules = ("WanBlock",)
    _keep_in_fp32_modules = ("time_embedding", "time_projection", "modulation", "norm")

    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        in_channels: int = 16,
        out_channels: int = 16,
        dim: int = 1536,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        num_heads: int = 12,
        text_dim: int = 4096,
        freq_dim: int = 256,
        eps: float = 1e-6,
        cross_attn_norm: bool = True,
        rope_max_seq_len: int = 1024,
        causal: bool = False,
        num_frames_per_chunk: int = 3,
        attention_backend: str = "auto",
        prediction_type: str = "flow",
        min_sigma: float = 1e-3,
    ) -> None:
        super().__init__()
        if prediction_type not in ("flow", "x0"):
            raise ValueError(f"prediction_type must be 'flow' or 'x0', got {prediction_type!r}")
        if prediction_type == "x0" and in_channels != out_channels:
            raise ValueError("prediction_type='x0' needs out_channels == in_channels")
        patch_size = tuple(patch_size)
        if len(patch_size) != 3 or patch_size[0] != 1:
            raise ValueError(
                f"patch_size must be (1, p_h, p_w) so tokens belong to one frame, got {patch_size}"
            )
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_layers = num_layers
        self.freq_dim = freq_dim
        self.text_dim = text_dim
        self.causal = causal
        self.num_frames_per_chunk = num_frames_per_chunk
        self.default_pattern = FrameAttentionPattern(num_frames_per_chunk if causal else None)
        self.attention_backend = attention_backend
        self.prediction_type = prediction_type
        self.min_sigma = min_sigma
        self.backend: AttentionBackend = build_attention_backend(attention_backend)
        self._mask_cache: OrderedDict[tuple, Any] = OrderedDict()

        # 1. Patch, text and time embeddings
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.rope = Rope3D(self.head_dim, rope_max_seq_len)

        # 2. Blocks and head
        self.blocks = nn.ModuleList(
            WanBlock(dim, ffn_dim, num_heads, eps, cross_attn_norm) for _ in range(num_layers)
        )
        self.head = WanHead(dim, out_channels * math.prod(patch_size), eps)

    @property
    def rope_max_seq_len(self) -> int:
        """Frames (and rows, columns) the RoPE table covers."""
        return self.rope.max_seq_len

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of ``height x width``."""
        return (height // self.patch_size[1]) * (width // self.patch_size[2])

    def new_kv_cache(
        self,
        batch_size: int,
        height: int,
        width: int,
        window_frames: int,
        sink_frames: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> RollingKVCache:
        """Allocate a rolling KV cache for latent frames of ``height x width``.

        Args:
            batch_size: Videos generated together.
            height: Latent height.
            width: Latent width.
            window_frames: Recent past frames kept (the paper's rolling window, e.g. 21 minus a chunk).
            sink_frames: Frames from the start kept forever.
            dtype: Cache dtype; defaults to the model's parameter dtype.
            device: Cache device; defaults to the model's device.
        """
        if not self.causal:
            raise ValueError("a KV cache needs a block-causal model (causal=True)")
        param = next(self.parameters())
        return RollingKVCache(
            num_layers=self.num_layers,
            batch_size=batch_size,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            tokens_per_frame=self.tokens_per_frame(height, width),
            num_frames_per_chunk=self.num_frames_per_chunk,
            window_frames=window_frames,
            sink_frames=sink_frames,
            dtype=dtype or param.dtype,
            device=device or param.device,
        )

    def _mask(
        self, pattern: FrameAttentionPattern, num_frames: int, tokens_per_frame: int, device: torch.device
    ) -> Any:
        """The backend's mask for a pattern, memoised (a few recent shapes)."""
        key = (pattern, num_frames, tokens_per_frame, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = self.backend.prepare_mask(pattern, num_frames, tokens_per_frame, device)
            if len(self._mask_cache) > 8:
                self._mask_cache.popitem(last=False)
        return self._mask_cache[key]

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding as one matrix product: ``(B, C, F, H, W) -> (B, L, dim)``, frame-major.

        ``patch_embedding`` is a Conv3d whose stride equals its kernel, i.e. a linear map of each
        non-overlapping patch; applying it as a matmul on the gathered patches gives the same tokens
        without the convolution's per-call overhead (a large part of a small chunk's forward).
        """
        batch, channels, num_frames, height, width = x.shape
        _, p_h, p_w = self.patch_size
        patches = x.reshape(batch, channels, num_frames, height // p_h, p_h, width // p_w, p_w)
        # (B, C, F, H', p_h, W', p_w) -> (B, F, H', W', C, p_h, p_w) -> (B, L, C * p_h * p_w)
        patches = patches.permute(0, 2, 3, 5, 1, 4, 6).reshape(batch, -1, channels * p_h * p_w)
        weight = self.patch_embedding.weight.flatten(1)  # (dim, C, 1, p_h, p_w) -> (dim, C * p_h * p_w)
        return F.linear(patches.to(weight.dtype), weight, self.patch_embedding.bias)  # (B, L, dim)

    def _check_inputs(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Validate shapes; return per-frame timesteps ``(B, F)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, F, H, W), got {tuple(x.shape)}")
        batch, _, num_frames, height, width = x.shape
        if height % self.patch_size[1] or width % self.patch_size[2]:
            raise ValueError(
                f"latent size {height}x{width} is not divisible by the patch size {self.patch_size[1:]}"
            )
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(batch, num_frames)  # (B, F)
        if timestep.shape != (batch, num_frames):
            raise ValueError(
                f"timestep must be (B,) or (B, F) = ({batch}, {num_frames}), got {tuple(timestep.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.text_dim:
            raise ValueError(
                f"context must be (B={batch}, L_text, text_dim={self.text_dim}), got {tuple(context.shape)}; "
                "the text encoder's width must be the model's text_dim"
            )
        return timestep

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        *,
        kv_cache: RollingKVCache | None = None,
        frame_offset: int = 0,
        write_cache: bool = False,
        attention_pattern: FrameAttentionPattern | None = None,
    ) -> torch.Tensor:
        """Predict the flow for latent frames.

        Full-sequence mode (``kv_cache is None``): all frames at once under ``attention_pattern``
        (default: bidirectional, or block-causal over the model's chunks). Cached mode: ``x`` is
        one chunk starting at absolute frame ``frame_offset`` (which must equal the frames already
        cached); it attends to the cache and, with ``write_cache``, is stored in it.

        Args:
            x: Latents ``(B, C, F, H, W)``.
            timestep: ``(B,)`` or per-frame ``(B, F)``, on the 0..1000 scale.
            context: Text embeddings ``(B, L_text, text_dim)``. With a cache holding the text K/V
                already, the text is not re-embedded.
            kv_cache: Rolling cache for streaming; ``None`` for a full-sequence forward.
            frame_offset: Absolute index of the first frame of ``x`` (RoPE position).
            write_cache: Store this chunk's keys/values in the cache (the clean pass).
            attention_pattern: Override of the full-sequence frame pattern (e.g. a sliding window).

        Returns:
            Flow prediction ``(B, out_channels, F, H, W)``.
        """
        timestep = self._check_inputs(x, timestep, context)
        batch, _, num_frames, height, width = x.shape
        p_t, p_h, p_w = self.patch_size
        grid = (num_frames // p_t, height // p_h, width // p_w)
        if kv_cache is not None:
            kv_cache.check_call(frame_offset, num_frames, batch, self.patch_embedding.weight.dtype)
            if attention_pattern is not None:
                raise ValueError(
                    "attention_pattern applies to the full-sequence forward; the cache sets its own"
                )
            mask = None
        else:
            if write_cache:
                raise ValueError("write_cache=True needs a kv_cache")
            pattern = attention_pattern or self.default_pattern
            mask = self._mask(pattern, grid[0], grid[1] * grid[2], x.device)

        tokens, rope, time_emb, time_mod, text = self._embed(x, timestep, context, kv_cache, frame_offset)

        # 4. Blocks
        for layer, block in enumerate(self.blocks):
            text_kv = self._text_kv(layer, text, kv_cache)
            tokens = block(tokens, time_mod, rope, text_kv, self.backend, mask, kv_cache, layer, write_cache)
        if kv_cache is not None and write_cache:
            kv_cache.advance(num_frames)

        # 5. Head and unpatchify: (B, L, p*C) -> (B, C, F, H, W)
        out = self.head(tokens, time_emb)  # (B, L, p_t * p_h * p_w * C)
        out = out.reshape(batch, *grid, p_t, p_h, p_w, self.out_channels)  # (B, F', H', W', p_t, p_h, p_w, C)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F', p_t, H', p_h, W', p_w)
        out = out.reshape(batch, self.out_channels, num_frames, height, width)  # (B, C, F, H, W)
        if self.prediction_type == "x0":  # x0 -> flow = (x_t - x0) / sigma
            sigma = (timestep.float() / 1000.0).clamp_min(self.min_sigma)  # (B, F)
            sigma = sigma[:, None, :, None, None]  # (B, 1, F, 1, 1)
            out = ((x.float() - out.float()) / sigma).type_as(out)
        return out

    def _embed(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        kv_cache: RollingKVCache | None,
        frame_offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Steps 1-3 of a forward: tokens, RoPE rotation, time embedding and modulation, text.

        Args:
            x: Latents ``(B, C, F, H, W)``.
            timestep: Per-frame timesteps ``(B, F)``.
            context: Text embeddings ``(B, L_text, text_dim)``.
            kv_cache: The cache, whose stored text keys/values make the text embedding unneeded.
            frame_offset: Absolute index of the first frame (RoPE position).

        Returns:
            ``tokens (B, L, dim)``, ``rope (1, L, 1, head_dim // 2)`` complex, ``time_emb (B, F, dim)``,
            ``time_mod (B, F, 6, dim)`` and the embedded text ``(B, L_text, dim)`` (``None`` when
            every layer's text keys/values are cached already).
        """
        _, _, num_frames, height, width = x.shape
        grid = (num_frames, height // self.patch_size[1], width // self.patch_size[2])

        # 1. Patchify: (B, C, F, H, W) -> (B, L, dim)
        tokens = self._patchify(x)  # (B, L, dim)
        rope = rope_rotation(*self.rope(frame_offset, *grid))  # (1, L, 1, head_dim // 2) complex

        # 2. Per-frame time embedding and modulation
        time_emb = self.time_embedding(
            sinusoidal_embedding(timestep, self.freq_dim).to(tokens.dtype)
        )  # (B, F, dim)
        time_mod = self.time_projection(time_emb).unflatten(2, (6, -1))  # (B, F, 6, dim)

        # 3. Text (its keys/values are computed once per rollout when a cache is used)
        need_text = kv_cache is None or any(kv is None for kv in kv_cache.cross_kv)
        text = self.text_embedding(context.to(tokens.dtype)) if need_text else None  # (B, Lt, dim)
        return tokens, rope, time_emb, time_mod, text

    def _text_kv(
        self, layer: int, text: torch.Tensor | None, kv_cache: RollingKVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of one layer, from (and stored in) the cache when there is one."""
        cross_attn = self.blocks[layer].cross_attn
        if kv_cache is None:
            return cross_attn.text_kv(text)
        if kv_cache.cross_kv[layer] is None:
            kv_cache.cross_kv[layer] = tuple(t.detach() for t in cross_attn.text_kv(text))
        return kv_cache.cross_kv[layer]

    @torch.no_grad()
    def write_chunk(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        *,
        kv_cache: RollingKVCache,
        frame_offset: int,
    ) -> None:
        """Store a finished chunk in the cache: the clean pass of a rollout, without its unused output.

        Writes the same keys and values as ``forward(..., kv_cache=kv_cache, write_cache=True)``
        but skips what only produces the output: the last block's attention, cross-attention and
        feed-forward, and the head (about a fifth of a forward for the 4-block toy model, 1/30 for
        Wan2.1-1.3B). Gradient-free, as the cache is.

        Args:
            x: The chunk's latents ``(B, C, F, H, W)``, ``F`` at most one chunk.
            timestep: ``(B,)`` or ``(B, F)`` (the rollout's context timestep, usually 0).
            context: Text embeddings ``(B, L_text, text_dim)``.
            kv_cache: The rolling cache; ``frame_offset`` must equal its ``num_frames``.
            frame_offset: Absolute index of the chunk's first frame.
        """
        timestep = self._check_inputs(x, timestep, context)
        batch, _, num_frames = x.shape[:3]
        kv_cache.check_call(frame_offset, num_frames, batch, self.patch_embedding.weight.dtype)
        tokens, rope, _, time_mod, text = self._embed(x, timestep, context, kv_cache, frame_offset)
        last = self.num_layers - 1
        for layer, block in enumerate(self.blocks):
            text_kv = self._text_kv(layer, text, kv_cache)
            tokens = block(
                tokens,
                time_mod,
                rope,
                text_kv,
                self.backend,
                None,
                kv_cache,
                layer,
                True,
                cache_only=layer == last,
            )
        kv_cache.advance(num_frames)

    @classmethod
    def from_flavour(cls, flavour: str, **overrides: Any) -> CausalWanDiT:
        """Build a registered size flavour (see :mod:`sfpp.models.flavours`), with overrides."""
        from sfpp.models.flavours import flavour_config

        return cls(**{**flavour_config(flavour), **overrides})
