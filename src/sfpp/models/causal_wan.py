"""CausalWanDiT: the Wan2.1 text-to-video transformer, bidirectional or block-causal, with a KV cache.

The architecture is Wan2.1's: a 3D patch embedding, a text projection, a sinusoidal timestep
embedding turned into 6-way adaLN modulation (plus a learned ``modulation`` table per block),
self-attention with RMS q/k norm and 3D RoPE, cross-attention to the text, a GELU feed-forward and
a modulated output head. Parameter names follow the original Wan checkpoints, so those load
unchanged; :mod:`sfpp.models.wan` maps diffusers-format checkpoints onto them.

What this module adds to Wan:

* per-frame timesteps ``(B, F)``: each latent frame carries its own noise level;
* one class for bidirectional attention (teacher, critic) and block-causal attention over chunks of
  ``num_frames_per_chunk`` latent frames (student);
* two forwards sharing the same block code: a full-sequence forward under a frame attention
  pattern (training), and a cached chunk forward that attends to a
  :class:`~sfpp.models.kv_cache.RollingKVCache` (streaming rollout).

Its layers are in :mod:`sfpp.models.blocks`; its settings are a
:class:`~sfpp.models.config.CausalWanConfig` kept as ``model.config``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sfpp.models.attention import AttentionBackend, build_attention_backend
from sfpp.models.blocks import BlockCall, WanBlock, WanHead, sinusoidal_embedding
from sfpp.models.config import NUM_TRAIN_TIMESTEPS, CausalWanConfig
from sfpp.models.flavours import flavour_config
from sfpp.models.frame_mask import FrameAttentionPattern
from sfpp.models.kv_cache import RollingKVCache
from sfpp.models.rope import Rope3D, rope_rotation

__all__ = ["CausalWanDiT", "build_model"]


class CausalWanDiT(nn.Module):
    """Wan2.1 DiT with per-frame timesteps, block-causal attention and a rolling-cache forward.

    Built from a :class:`~sfpp.models.config.CausalWanConfig`, kept as :attr:`config` and read from
    there (``model.config.causal``, ``model.config.num_frames_per_chunk`` ...). Two functions make the
    config for it: :func:`build_model` from a registered size flavour (what Hydra's ``model`` configs
    call) and :func:`~sfpp.models.wan.build_from_pretrained` from Wan weights on disk.

    Args:
        config: The settings; ``None`` builds one from ``fields``.
        **fields: :class:`~sfpp.models.config.CausalWanConfig` fields, applied on top of ``config``.

    Raises:
        ValueError: For unknown fields or invalid settings (see
            :class:`~sfpp.models.config.CausalWanConfig`).
    """

    #: Modules Wan computes in float32 whatever the compute dtype (the time embedding and its
    #: projection, the affine LayerNorm before cross-attention): FSDP2's mixed precision gives each
    #: its own float32 unit (:mod:`sfpp.models.parallelize` reads this list).
    keep_in_fp32_modules: tuple[str, ...] = ("time_embedding", "time_projection", "norm3")

    def __init__(self, config: CausalWanConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = CausalWanConfig.from_dict(fields)
        elif fields:
            config = config.replace(**fields)
        self.config = config
        dim, eps = config.dim, config.eps
        self.default_pattern = FrameAttentionPattern(config.num_frames_per_chunk if config.causal else None)
        self.backend: AttentionBackend = build_attention_backend(config.attention_backend)
        self._mask_cache: OrderedDict[tuple, Any] = OrderedDict()

        # 1. Patch, text and time embeddings
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.rope = Rope3D(config.head_dim, config.rope_max_seq_len)

        # 2. Blocks and head
        self.blocks = nn.ModuleList(
            WanBlock(layer, dim, config.ffn_dim, config.num_heads, eps, config.cross_attn_norm)
            for layer in range(config.num_layers)
        )
        self.head = WanHead(dim, config.out_channels * math.prod(config.patch_size), eps)

    def fp32_modules(self) -> list[nn.Module]:
        """The modules named in :attr:`keep_in_fp32_modules` that hold parameters, outermost first."""
        return [
            module
            for name, module in self.named_modules()
            if name.rsplit(".", 1)[-1] in self.keep_in_fp32_modules
            and any(True for _ in module.parameters(recurse=True))
        ]

    @property
    def rope_max_seq_len(self) -> int:
        """Frames (and rows, columns) the RoPE table covers."""
        return self.rope.max_seq_len

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of ``height x width``."""
        return (height // self.config.patch_size[1]) * (width // self.config.patch_size[2])

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
        if not self.config.causal:
            raise ValueError("a KV cache needs a block-causal model (causal=True)")
        param = next(self.parameters())
        return RollingKVCache(
            num_layers=self.config.num_layers,
            batch_size=batch_size,
            num_heads=self.config.num_heads,
            head_dim=self.config.head_dim,
            tokens_per_frame=self.tokens_per_frame(height, width),
            num_frames_per_chunk=self.config.num_frames_per_chunk,
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
        _, p_h, p_w = self.config.patch_size
        patches = rearrange(x, "b c f (h ph) (w pw) -> b (f h w) (c ph pw)", ph=p_h, pw=p_w)
        weight = rearrange(self.patch_embedding.weight, "dim c 1 ph pw -> dim (c ph pw)")
        return F.linear(patches.to(weight.dtype), weight, self.patch_embedding.bias)  # (B, L, dim)

    def _check_inputs(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Validate shapes; return per-frame timesteps ``(B, F)``."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be (B, {self.config.in_channels}, F, H, W), got {tuple(x.shape)}")
        batch, _, num_frames, height, width = x.shape
        if height % self.config.patch_size[1] or width % self.config.patch_size[2]:
            raise ValueError(
                f"latent size {height}x{width} is not divisible by the patch size {self.config.patch_size[1:]}"
            )
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(batch, num_frames)  # (B, F)
        if timestep.shape != (batch, num_frames):
            raise ValueError(
                f"timestep must be (B,) or (B, F) = ({batch}, {num_frames}), got {tuple(timestep.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.config.text_dim:
            raise ValueError(
                f"context must be (B={batch}, L_text, text_dim={self.config.text_dim}), got {tuple(context.shape)}; "
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
        p_t, p_h, p_w = self.config.patch_size
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
        call = BlockCall(self.backend, mask, write_cache)
        for block in self.blocks:
            cache = None if kv_cache is None else kv_cache.layer(block.layer)
            tokens = block(tokens, time_mod, rope, self._text_kv(block, text, kv_cache), call, cache)
        if kv_cache is not None and write_cache:
            kv_cache.advance(num_frames)

        # 5. Head and unpatchify: (B, L, p*C) -> (B, C, F, H, W)
        out = self.head(tokens, time_emb)  # (B, L, p_t * p_h * p_w * C)
        out = rearrange(
            out,
            "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
            f=grid[0], h=grid[1], w=grid[2], pt=p_t, ph=p_h, pw=p_w,
        )  # fmt: skip
        if self.config.prediction_type == "x0":  # x0 -> flow = (x_t - x0) / sigma
            sigma = (timestep.float() / NUM_TRAIN_TIMESTEPS).clamp_min(self.config.min_sigma)  # (B, F)
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
            every layer's text keys/values are cached already and gradients are off).
        """
        _, _, num_frames, height, width = x.shape
        grid = (num_frames, height // self.config.patch_size[1], width // self.config.patch_size[2])

        # 1. Patchify: (B, C, F, H, W) -> (B, L, dim)
        tokens = self._patchify(x)  # (B, L, dim)
        rope = rope_rotation(*self.rope(frame_offset, *grid))  # (1, L, 1, head_dim // 2) complex

        # 2. Per-frame time embedding and modulation, in the time embedding's own dtype (float32
        # under a bf16 FSDP2 policy, which keeps that unit in float32)
        time_emb = self.time_embedding(
            sinusoidal_embedding(timestep.float(), self.config.freq_dim).to(
                self.time_embedding[0].weight.dtype
            )
        )  # (B, F, dim)
        time_mod = rearrange(self.time_projection(time_emb), "b f (six d) -> b f six d", six=6)

        # 3. Text (with a cache, its keys/values are computed once per rollout for gradient-free
        # calls; a call with gradients recomputes them, so that the text path is trained)
        need_text = kv_cache is None or torch.is_grad_enabled() or any(kv is None for kv in kv_cache.cross_kv)
        text = self.text_embedding(context.to(tokens.dtype)) if need_text else None  # (B, Lt, dim)
        return tokens, rope, time_emb, time_mod, text

    def _text_kv(
        self, block: nn.Module, text: torch.Tensor | None, kv_cache: RollingKVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of one layer, from (and stored in) the cache when there is one.

        The cache keeps them detached, for the gradient-free calls of a rollout (its no-grad
        denoising steps and clean passes). A call with gradients enabled computes them again with
        their graph, so that the text embedding and every block's ``cross_attn.k``, ``v`` and
        ``norm_k`` get the gradient of the loss (as the uncached forward gives them): the cost is
        the text's projections, small next to a chunk's attention.
        """
        cross_attn, layer = block.cross_attn, block.layer
        if kv_cache is None:
            return cross_attn.text_kv(text)
        if torch.is_grad_enabled():
            keys_values = cross_attn.text_kv(text)
            if kv_cache.cross_kv[layer] is None:
                kv_cache.cross_kv[layer] = tuple(t.detach() for t in keys_values)
            return keys_values
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
        writing, last_writing = (
            BlockCall(self.backend, write_cache=True),
            BlockCall(self.backend, cache_only=True),
        )
        for block in self.blocks:
            call = last_writing if block.layer == self.config.num_layers - 1 else writing
            text_kv = self._text_kv(block, text, kv_cache)
            tokens = block(tokens, time_mod, rope, text_kv, call, kv_cache.layer(block.layer))
        kv_cache.advance(num_frames)


def build_model(
    flavour: str,
    causal: bool = False,
    num_frames_per_chunk: int = 3,
    attention_backend: str = "auto",
    **overrides: Any,
) -> CausalWanDiT:
    """Build a :class:`CausalWanDiT` of a registered size flavour (:mod:`sfpp.models.flavours`).

    Args:
        flavour: ``tiny``, ``toy``, ``wan_1_3b``, ``wan_14b`` or ``wan2_2_ti2v_5b``.
        causal: Block-causal student instead of a bidirectional teacher/critic.
        num_frames_per_chunk: Latent frames per chunk of the block-causal model.
        attention_backend: ``auto``, ``flash``, ``flex`` or ``sdpa``.
        **overrides: Any other :class:`~sfpp.models.config.CausalWanConfig` field.

    Returns:
        A freshly initialised model.

    Raises:
        ValueError: For an unknown flavour or field.
    """
    config = flavour_config(
        flavour,
        causal=causal,
        num_frames_per_chunk=num_frames_per_chunk,
        attention_backend=attention_backend,
        **overrides,
    )
    return CausalWanDiT(config)
