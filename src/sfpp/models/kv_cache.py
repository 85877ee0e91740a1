"""Rolling KV cache for streaming generation: sink frames plus a ring buffer of recent frames.

Layout of each layer's key (and value) buffer, in frame slots of ``tokens_per_frame`` tokens::

    [ sink_0 .. sink_{S-1} | ring_0 .. ring_{W-1} ]

Frame ``i`` lives in slot ``i`` when ``i < S`` and in slot ``S + (i - S) % W`` otherwise. Writing a
chunk touches only its own slots (O(chunk), no roll or copy of the cache), and because RoPE is
applied to keys before they are cached, the order of the slots does not matter to attention.
Frames are written in order, so the visible frames always occupy a prefix of the buffer: before
the ring wraps it is ``[0, frames_written)``, afterwards the sink and ring slots. Reading is a view.

One chunk of scratch slots follows the ring. A gradient-free call puts the current chunk's keys and
values right after the visible prefix (:meth:`RollingKVCache.with_chunk`), so attention reads one
contiguous view of past and present instead of a concatenated copy of the whole window: the cost of
a cached call no longer grows with the window. (Before the ring wraps, the slots after the prefix
are the very slots the chunk will be written to; afterwards they are the scratch slots.)

The visible set is exactly :class:`~sfpp.models.frame_mask.FrameAttentionPattern`'s rule for the
chunk that starts at ``num_frames`` (the next frame to generate), which is what makes cached
rollout equal to a masked full-sequence forward.

The cross-attention keys and values of the text are computed once per rollout and kept here too.

A block sees one layer of the cache through a :class:`LayerCache`: :meth:`RollingKVCache.layer`
gives the live view (read the visible past, put a chunk after it, write a chunk), and
:meth:`LayerKVCache.snapshot` a frozen copy of what the layer's next call reads (what activation
checkpointing recomputes a block with, after later chunks have overwritten the live buffer).
"""

from __future__ import annotations

from typing import Protocol

import torch

from sfpp.models.frame_mask import FrameAttentionPattern

__all__ = ["LayerCache", "LayerKVCache", "PastKeysValues", "RollingKVCache"]


class LayerCache(Protocol):
    """What a block reads and writes of the KV cache, for its own layer."""

    layer: int

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the past frames visible to the next chunk, each ``(B, Lpast, H, D)``."""
        ...

    def with_chunk(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The visible past followed by the chunk's keys and values (gradient-free calls)."""
        ...

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the chunk's keys and values."""
        ...


class LayerKVCache:
    """One layer's live view of a :class:`RollingKVCache` (see :meth:`RollingKVCache.layer`).

    Args:
        cache: The whole cache.
        layer: Block index.
    """

    def __init__(self, cache: RollingKVCache, layer: int) -> None:
        self.cache = cache
        self.layer = layer

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`RollingKVCache.visible`."""
        return self.cache.visible(self.layer)

    def with_chunk(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`RollingKVCache.with_chunk`."""
        return self.cache.with_chunk(self.layer, keys, values)

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """See :meth:`RollingKVCache.write`."""
        self.cache.write(self.layer, keys, values)

    def snapshot(self) -> PastKeysValues:
        """A copy of the keys and values this layer's next call reads, detached from the live buffer."""
        keys, values = self.visible()
        return PastKeysValues(self.layer, keys.clone(), values.clone())


class PastKeysValues:
    """A read-only copy of the past one layer attends to (see :meth:`LayerKVCache.snapshot`).

    Args:
        layer: Block index.
        keys: ``(B, Lpast, H, D)`` keys, RoPE applied.
        values: Same shape as ``keys``.
    """

    def __init__(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.layer = layer
        self.keys = keys
        self.values = values

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The copied ``(keys, values)``."""
        return self.keys, self.values

    def with_chunk(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The copied past followed by the chunk (a concatenated copy: the snapshot has no spare slots)."""
        return torch.cat([self.keys, keys], dim=1), torch.cat([self.values, values], dim=1)

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Refused: a snapshot is what a past call read, not a place to store a chunk."""
        raise RuntimeError(f"the snapshot of layer {self.layer}'s cache is read-only")


class RollingKVCache:
    """Preallocated per-layer self-attention cache plus the text cross-attention K/V.

    Args:
        num_layers: Transformer blocks.
        batch_size: Videos generated together; every call must use this batch size.
        num_heads: Attention heads.
        head_dim: Channels per head.
        tokens_per_frame: Tokens of one latent frame after patching.
        num_frames_per_chunk: Frames generated per chunk (the model's block size).
        window_frames: Recent past frames kept in the ring buffer.
        sink_frames: Frames from the start of the video kept forever.
        dtype: Dtype of the cached keys and values; calls with another dtype raise an error.
        device: Device of the buffers.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        num_frames_per_chunk: int,
        window_frames: int,
        sink_frames: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        # The pattern validates window vs chunk and the sink count.
        self.pattern = FrameAttentionPattern(num_frames_per_chunk, window_frames, sink_frames)
        for name, value in (
            ("num_layers", num_layers),
            ("batch_size", batch_size),
            ("tokens_per_frame", tokens_per_frame),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.tokens_per_frame = tokens_per_frame
        self.num_frames_per_chunk = num_frames_per_chunk
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.dtype = dtype
        num_slots = sink_frames + window_frames + num_frames_per_chunk  # + one chunk of scratch slots
        shape = (num_layers, batch_size, num_slots * tokens_per_frame, num_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self._views = [LayerKVCache(self, layer) for layer in range(num_layers)]
        self.num_frames = 0
        """Frames written so far (the absolute index of the next frame to generate)."""

    @property
    def nbytes(self) -> int:
        """Bytes held by the self-attention buffers (constant for the cache's lifetime)."""
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def layer(self, index: int) -> LayerKVCache:
        """The view of one layer that its block reads and writes."""
        return self._views[index]

    def reset(self) -> None:
        """Forget every frame and the text K/V, keeping the buffers (a new rollout)."""
        self.num_frames = 0
        self.reset_cross_attention()

    def reset_cross_attention(self) -> None:
        """Forget the text K/V so the next call recomputes it (for a prompt switch)."""
        self.cross_kv = [None] * self.num_layers

    def _num_visible_slots(self) -> int:
        """Frame slots visible to the chunk that starts at ``num_frames`` (a prefix of the buffer)."""
        sinks = min(self.sink_frames, self.num_frames)
        ring = min(self.window_frames, max(0, self.num_frames - self.sink_frames))
        return sinks + ring

    def check_call(self, frame_offset: int, num_frames: int, batch_size: int, dtype: torch.dtype) -> None:
        """Raise a clear error for a call the cache cannot serve without breaking causality.

        Args:
            frame_offset: Absolute index of the chunk's first frame.
            num_frames: Frames in the chunk.
            batch_size: Batch size of the call.
            dtype: Dtype of the call's keys and values.
        """
        if batch_size != self.batch_size:
            raise ValueError(f"the KV cache was built for batch size {self.batch_size}, got {batch_size}")
        if dtype != self.dtype:
            raise ValueError(
                f"the KV cache holds {self.dtype} keys, got {dtype}; build the cache with dtype={dtype}"
            )
        if frame_offset != self.num_frames:
            raise ValueError(
                f"chunk starts at frame {frame_offset} but the cache holds frames [0, {self.num_frames}): "
                "chunks must be generated in order, each written once (reset() to start a new video)"
            )
        if num_frames > self.num_frames_per_chunk:
            raise ValueError(
                f"a cached call takes at most one chunk ({self.num_frames_per_chunk} frames), got {num_frames}"
            )

    def visible(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the past frames visible to the next chunk, as views.

        Returns:
            ``(keys, values)``, each ``(B, visible_frames * tokens_per_frame, H, D)``.
        """
        end = self._num_visible_slots() * self.tokens_per_frame
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def with_chunk(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The visible past followed by the current chunk's keys and values, as views (no copy of the past).

        The chunk goes to the slots right after the visible prefix; it is not recorded as written
        (call :meth:`write` for that, after attention). For gradient-free calls only: the buffer
        must not become part of an autograd graph.

        Args:
            layer: Block index.
            keys: The chunk's ``(B, L, H, D)`` keys, RoPE applied; ``L`` at most one chunk.
            values: Same shape as ``keys``.

        Returns:
            ``(keys, values)``, each ``(B, visible_tokens + L, H, D)``.
        """
        end = self.visible(layer)[0].shape[1]
        stop = end + keys.shape[1]
        self.keys[layer, :, end:stop] = keys
        self.values[layer, :, end:stop] = values
        return self.keys[layer, :, :stop], self.values[layer, :, :stop]

    def _slot(self, frame: int) -> int:
        if frame < self.sink_frames:
            return frame
        return self.sink_frames + (frame - self.sink_frames) % self.window_frames

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the keys and values of the chunk that starts at ``num_frames`` for one layer.

        Call :meth:`advance` once every layer has written. Writes touch only the chunk's slots.

        Args:
            layer: Block index.
            keys: ``(B, chunk_frames * tokens_per_frame, H, D)``, RoPE already applied.
            values: Same shape as ``keys``.
        """
        tpf = self.tokens_per_frame
        num_frames = keys.shape[1] // tpf
        frame = 0
        while frame < num_frames:  # contiguous runs of slots: at most three (sinks, ring, wrap)
            slot = self._slot(self.num_frames + frame)
            run = 1
            while frame + run < num_frames and self._slot(self.num_frames + frame + run) == slot + run:
                run += 1
            self.keys[layer, :, slot * tpf : (slot + run) * tpf] = keys[:, frame * tpf : (frame + run) * tpf]
            self.values[layer, :, slot * tpf : (slot + run) * tpf] = values[
                :, frame * tpf : (frame + run) * tpf
            ]
            frame += run

    def advance(self, num_frames: int) -> None:
        """Record that a chunk of ``num_frames`` frames has been written to every layer."""
        self.num_frames += num_frames
