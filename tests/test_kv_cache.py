import pytest
import torch

from sfpp.models import FrameAttentionPattern, RollingKVCache, build_model


def _model(chunk=2, **kw):
    torch.manual_seed(0)
    return build_model("tiny", causal=True, num_frames_per_chunk=chunk, attention_backend="sdpa", **kw).eval()


def _inputs(frames, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, 8, 8, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    c = torch.randn(batch, 5, 16, generator=g)
    return x, t, c


def _cached_forward(model, x, t, c, cache):
    chunk = model.config.num_frames_per_chunk
    outs = []
    for s in range(0, x.shape[2], chunk):
        outs.append(
            model(
                x[:, :, s : s + chunk],
                t[:, s : s + chunk],
                c,
                kv_cache=cache,
                frame_offset=s,
                write_cache=True,
            )
        )
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_cached_equals_block_causal_full_forward_while_cache_not_full(chunk):
    frames = 4 * chunk
    model = _model(chunk)
    x, t, c = _inputs(frames)
    cache = model.new_kv_cache(2, 8, 8, window_frames=frames)
    cached = _cached_forward(model, x, t, c, cache)
    full = model(x, t, c)
    assert (cached - full).abs().max() <= 1e-5


@pytest.mark.parametrize(("chunk", "window", "sink"), [(2, 4, 0), (2, 4, 2), (3, 6, 3), (2, 5, 1), (1, 3, 1)])
def test_cached_equals_sliding_window_mask_past_the_window(chunk, window, sink):
    frames = 6 * chunk + window  # well past the window: the ring wraps several times
    model = _model(chunk)
    x, t, c = _inputs(frames)
    cache = model.new_kv_cache(2, 8, 8, window_frames=window, sink_frames=sink)
    cached = _cached_forward(model, x, t, c, cache)
    pattern = FrameAttentionPattern(chunk, window_frames=window, sink_frames=sink)
    full = model(x, t, c, attention_pattern=pattern)
    assert (cached - full).abs().max() <= 1e-5
    # And the window matters: the unwindowed full forward differs late in the video.
    assert (model(x, t, c)[:, :, -chunk:] - cached[:, :, -chunk:]).abs().max() > 1e-3


def test_cache_memory_is_constant_and_writes_in_place():
    model = _model(2)
    cache = model.new_kv_cache(1, 8, 8, window_frames=4, sink_frames=2)
    nbytes, ptrs = cache.nbytes, (cache.keys.data_ptr(), cache.values.data_ptr())
    _, _, c = _inputs(2, batch=1)
    for frames_done in range(0, 60, 2):
        x, t, _ = _inputs(2, batch=1, seed=frames_done)
        with torch.no_grad():
            model(x, t, c, kv_cache=cache, frame_offset=frames_done, write_cache=True)
        assert cache.nbytes == nbytes
        assert (cache.keys.data_ptr(), cache.values.data_ptr()) == ptrs
    assert cache.num_frames == 60
    assert cache.keys.shape[2] == (2 + 4 + 2) * 16  # sinks + window + one chunk of scratch slots


@torch.no_grad()
def test_text_kv_is_computed_once_per_rollout():
    model = _model(2)
    x, t, c = _inputs(4)
    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    model(x[:, :, :2], t[:, :2], c, kv_cache=cache, frame_offset=0, write_cache=True)
    first = cache.cross_kv[0][0]
    # A different context is ignored while the cached text K/V stands...
    out_same = model(x[:, :, 2:], t[:, 2:], torch.zeros_like(c), kv_cache=cache, frame_offset=2)
    assert cache.cross_kv[0][0] is first
    # ...and taken after reset_cross_attention (a prompt switch).
    cache.reset_cross_attention()
    out_new = model(x[:, :, 2:], t[:, 2:], torch.zeros_like(c), kv_cache=cache, frame_offset=2)
    assert not torch.allclose(out_same, out_new)


def test_a_call_with_gradients_reads_the_text_again_and_keeps_the_cache_detached():
    model = _model(2)
    x, t, c = _inputs(4)
    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    with torch.no_grad():
        model(x[:, :, :2], t[:, :2], c, kv_cache=cache, frame_offset=0, write_cache=True)
    first = cache.cross_kv[0][0]
    with_grad = model(x[:, :, 2:], t[:, 2:], c, kv_cache=cache, frame_offset=2)
    with torch.no_grad():
        without = model(x[:, :, 2:], t[:, 2:], c, kv_cache=cache, frame_offset=2)
    torch.testing.assert_close(with_grad.detach(), without, rtol=0, atol=1e-6)  # same keys/values
    assert with_grad.requires_grad and cache.cross_kv[0][0] is first and first.grad_fn is None


def test_ring_slots_hold_the_visible_frames():
    cache = RollingKVCache(
        1, 1, 1, 1, tokens_per_frame=1, num_frames_per_chunk=2, window_frames=4, sink_frames=1
    )
    for start in range(0, 12, 2):
        frames = torch.tensor([start, start + 1], dtype=torch.float32).view(1, 2, 1, 1)
        cache.check_call(start, 2, 1, torch.float32)
        visible = sorted(cache.visible(0)[0].flatten().tolist())
        expected = [
            f
            for f in range(start)
            if FrameAttentionPattern(2, 4, 1).visible(torch.tensor(start), torch.tensor(f))
        ]
        assert visible == expected
        cache.write(0, frames, frames)
        cache.advance(2)


def test_invalid_settings_raise_clear_errors():
    model = _model(3)
    with pytest.raises(ValueError, match="window_frames=2 is smaller than a chunk"):
        model.new_kv_cache(1, 8, 8, window_frames=2)
    cache = model.new_kv_cache(1, 8, 8, window_frames=6)
    x, t, c = _inputs(3, batch=2)
    with pytest.raises(ValueError, match="batch size 1"):
        model(x, t, c, kv_cache=cache, frame_offset=0)
    x, t, c = _inputs(3, batch=1)
    with pytest.raises(ValueError, match="chunk starts at frame 3"):
        model(x, t, c, kv_cache=cache, frame_offset=3)
    with pytest.raises(ValueError, match="holds torch.float64 keys, got torch.float32"):
        model(x, t, c, kv_cache=model.new_kv_cache(1, 8, 8, window_frames=6, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most one chunk"):
        model(*_inputs(6, batch=1), kv_cache=cache, frame_offset=0)
    with pytest.raises(ValueError, match="needs a block-causal model"):
        build_model("tiny").new_kv_cache(1, 8, 8, window_frames=6)
    small = _model(3, rope_max_seq_len=6)
    cache = small.new_kv_cache(1, 8, 8, window_frames=3)
    for s in (0, 3):
        small(x, t, c, kv_cache=cache, frame_offset=s, write_cache=True)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        small(x, t, c, kv_cache=cache, frame_offset=6)


def test_gradient_free_calls_read_the_window_in_place_and_match_the_concatenating_path():
    """No-grad calls put the chunk after the visible prefix (a view); graph-keeping calls concatenate."""
    model = _model(2)
    _, _, c = _inputs(2, batch=1)
    caches = [model.new_kv_cache(1, 8, 8, window_frames=4, sink_frames=2) for _ in range(2)]
    for frames_done in range(0, 16, 2):  # past the wrap of the ring
        x, t, _ = _inputs(2, batch=1, seed=frames_done)
        with torch.no_grad():
            in_place = model(x, t, c, kv_cache=caches[0], frame_offset=frames_done, write_cache=True)
        with torch.enable_grad():
            concatenated = model(x, t, c, kv_cache=caches[1], frame_offset=frames_done, write_cache=True)
        assert concatenated.requires_grad
        torch.testing.assert_close(in_place, concatenated.detach(), rtol=0, atol=1e-6)
    visible = caches[0]._num_visible_slots() * caches[0].tokens_per_frame
    torch.testing.assert_close(caches[0].keys[:, :, :visible], caches[1].keys[:, :, :visible])


@pytest.mark.parametrize(("window", "sink"), [(4, 0), (4, 2)])
def test_write_chunk_stores_what_the_cache_writing_forward_stores(window, sink):
    """The output-free clean pass writes the same keys and values as a full cache-writing forward."""
    model = _model(2)
    x, t, c = _inputs(12)
    full_pass = model.new_kv_cache(2, 8, 8, window_frames=window, sink_frames=sink)
    trimmed = model.new_kv_cache(2, 8, 8, window_frames=window, sink_frames=sink)
    for s in range(0, 12, 2):
        model(x[:, :, s : s + 2], t[:, s : s + 2], c, kv_cache=full_pass, frame_offset=s, write_cache=True)
        model.write_chunk(x[:, :, s : s + 2], t[:, s : s + 2], c, kv_cache=trimmed, frame_offset=s)
        assert trimmed.num_frames == full_pass.num_frames == s + 2
        for layer in range(model.config.num_layers):  # (slots past the visible ones are scratch space)
            for a, b in zip(trimmed.visible(layer), full_pass.visible(layer), strict=True):
                assert a.abs().sum() > 0 and torch.equal(a, b)
    with pytest.raises(ValueError, match="chunk starts at frame"):
        model.write_chunk(x[:, :, :2], t[:, :2], c, kv_cache=trimmed, frame_offset=0)


def test_a_layer_view_reads_and_writes_its_layer_and_a_snapshot_is_a_frozen_copy():
    from sfpp.models.blocks import BlockCall

    model = _model(2)
    cache = model.new_kv_cache(1, 8, 8, window_frames=4)
    x, t, c = torch.randn(1, 4, 2, 8, 8), torch.full((1,), 500.0), torch.randn(1, 5, 16)
    with torch.no_grad():
        model(x, t, c, kv_cache=cache, frame_offset=0, write_cache=True)
    view = cache.layer(1)
    assert view.layer == 1 and all(
        torch.equal(a, b) for a, b in zip(view.visible(), cache.visible(1), strict=True)
    )
    snapshot = view.snapshot()
    assert all(torch.equal(a, b) for a, b in zip(snapshot.visible(), cache.visible(1), strict=True))
    cache.keys.zero_()  # later chunks overwrite the live buffer; the snapshot keeps what was read
    assert snapshot.visible()[0].abs().sum() > 0 and cache.visible(1)[0].abs().sum() == 0
    with pytest.raises(RuntimeError, match="read-only"):
        snapshot.write(*snapshot.visible())
    block, tokens = model.blocks[0], torch.randn(1, 32, 32)
    rope = torch.ones(1, 32, 1, 8, dtype=torch.complex64)
    text_kv = block.cross_attn.text_kv(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="block 0 was given the cache view of layer 1"):
        block(tokens, torch.zeros(1, 2, 6, 32), rope, text_kv, BlockCall(model.backend), cache.layer(1))
