import pytest
import torch

from sfpp.diffusion import FewStepSampler, add_noise, stream_rollout, x0_from_flow
from sfpp.diffusion.rollout import rollout
from sfpp.models import FrameAttentionPattern, build_model

SAMPLER = FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)


def _model(chunk=2, **kw):
    torch.manual_seed(0)
    return build_model("tiny", causal=True, num_frames_per_chunk=chunk, attention_backend="sdpa", **kw).eval()


def _context(batch=2, seed=3):
    return torch.randn(batch, 5, 16, generator=torch.Generator().manual_seed(seed))


def _reference_rollout(model, context, noise, sampler, renoise, pattern):
    """O(N^2) rollout without a cache: every call re-runs the clean prefix under the frame pattern."""
    chunk = model.config.num_frames_per_chunk
    batch, frames = noise.shape[0], noise.shape[2]
    clean = noise[:, :, :0]
    draws = iter(renoise)
    for s in range(0, frames, chunk):
        x_t = noise[:, :, s : s + chunk]
        for i, (t, sigma) in enumerate(zip(sampler.timesteps, sampler.sigmas, strict=True)):
            x = torch.cat([clean, x_t], dim=2)
            steps = torch.cat(
                [torch.full((batch, s), sampler.context_timestep), torch.full((batch, chunk), t)], dim=1
            )
            flow = model(x, steps, context, attention_pattern=pattern)[:, :, s:]
            x0 = x0_from_flow(flow, x_t, sigma)
            if i + 1 < len(sampler.sigmas):
                x_t = add_noise(x0, next(draws), sampler.sigmas[i + 1])
        clean = torch.cat([clean, x0], dim=2)
    return clean


@pytest.mark.parametrize(("window", "sink"), [(12, 0), (4, 0), (4, 2)])
def test_cached_rollout_equals_uncached_reference(window, sink):
    model, context = _model(2), _context()
    frames = 12
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 4, frames, 8, 8, generator=g)
    # The rollout draws re-noising noise from the generator in order: replay the same draws.
    g_replay = torch.Generator().manual_seed(11)
    renoise = [torch.randn(2, 4, 2, 8, 8, generator=g_replay) for _ in range(frames // 2 * 3)]
    cache = model.new_kv_cache(2, 8, 8, window_frames=window, sink_frames=sink)
    with torch.no_grad():
        cached = rollout(
            model, context, cache, frames, (4, 8, 8), SAMPLER, torch.Generator().manual_seed(11), noise
        )
        pattern = FrameAttentionPattern(2, window_frames=window, sink_frames=sink)
        reference = _reference_rollout(model, context, noise, SAMPLER, renoise, pattern)
    assert cached.shape == (2, 4, frames, 8, 8)
    assert (cached - reference).abs().max() <= 1e-5


def test_same_seed_same_video_and_streaming_continues_the_cache():
    model, context = _model(2), _context()

    def run(seed):
        cache = model.new_kv_cache(2, 8, 8, window_frames=4)
        with torch.no_grad():
            return rollout(model, context, cache, 8, (4, 8, 8), SAMPLER, torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Two calls of 4 frames on one cache give the same video as one call of 8.
    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        first = rollout(model, context, cache, 4, (4, 8, 8), SAMPLER, g)
        second = rollout(model, context, cache, 4, (4, 8, 8), SAMPLER, g)
    assert torch.equal(torch.cat([first, second], dim=2), a)


def test_stream_yields_chunks_in_order():
    model, context = _model(2), _context()
    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    with torch.no_grad():
        chunks = list(
            stream_rollout(model, context, cache, 10, (4, 8, 8), SAMPLER, torch.Generator().manual_seed(0))
        )
    assert [c.frame_offset for c in chunks] == [0, 2, 4, 6, 8]
    assert all(c.latents.shape == (2, 4, 2, 8, 8) for c in chunks)
    assert cache.num_frames == 10


def test_few_step_sampler_warps_reference_steps():
    assert [round(t, 3) for t in SAMPLER.timesteps] == [1000.0, 937.5, 833.333, 625.0]
    with pytest.raises(ValueError, match="strictly decreasing"):
        FewStepSampler(timesteps=(500.0, 750.0))
    with pytest.raises(ValueError, match="at least one"):
        FewStepSampler(timesteps=())


def test_rollout_rejects_impossible_requests_before_work():
    model, context = _model(3, rope_max_seq_len=12), _context()
    cache = model.new_kv_cache(2, 8, 8, window_frames=6)
    with pytest.raises(ValueError, match="multiple of num_frames_per_chunk=3"):
        next(stream_rollout(model, context, cache, 10, (4, 8, 8), SAMPLER))
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        next(stream_rollout(model, context, cache, 15, (4, 8, 8), SAMPLER))
    with pytest.raises(ValueError, match="initial_noise"):
        next(
            stream_rollout(
                model, context, cache, 6, (4, 8, 8), SAMPLER, initial_noise=torch.zeros(1, 4, 6, 8, 8)
            )
        )
    bidirectional = build_model("tiny")
    with pytest.raises(ValueError, match="block-causal"):
        next(stream_rollout(bidirectional, context, cache, 6, (4, 8, 8), SAMPLER))


def test_exit_steps_stop_each_chunk_early():
    model, context = _model(2), _context()
    noise = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model.new_kv_cache(2, 8, 8, window_frames=4)
        early = rollout(
            model, context, cache, 4, (4, 8, 8), SAMPLER, torch.Generator().manual_seed(1), noise, [0, 0]
        )
        cache = model.new_kv_cache(2, 8, 8, window_frames=4)
        one_step = FewStepSampler(timesteps=SAMPLER.timesteps[:1])
        reference = rollout(
            model, context, cache, 4, (4, 8, 8), one_step, torch.Generator().manual_seed(1), noise
        )
    assert torch.equal(early, reference)  # exiting at step 0 == a one-step sampler
    with pytest.raises(ValueError, match="one step index"):
        next(
            stream_rollout(
                model,
                context,
                model.new_kv_cache(2, 8, 8, window_frames=4),
                4,
                (4, 8, 8),
                SAMPLER,
                exit_steps=[0, 4],
            )
        )


def _window_rollout(model, exit_steps):
    """An 8-frame training rollout whose last two chunks (from frame 4) keep the graph of their exit step."""
    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    chunks = stream_rollout(
        model,
        _context(),
        cache,
        8,
        (4, 8, 8),
        SAMPLER,
        torch.Generator().manual_seed(0),
        exit_steps=exit_steps,
        grad_from_frame=4,
    )
    return list(chunks), cache


def test_gradient_only_reaches_chunks_in_the_window():
    model = _model(2).train()
    chunks, cache = _window_rollout(model, [3, 1, 2, 0])
    assert [c.latents.requires_grad for c in chunks] == [False, False, True, True]
    torch.cat([c.latents for c in chunks[2:]], dim=2).square().mean().backward()
    grad = model.patch_embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert cache.keys.grad_fn is None  # the cache never holds a graph


def _text_path(name: str) -> bool:
    return name.startswith("text_embedding.") or any(
        part in name for part in (".cross_attn.k.", ".cross_attn.v.", ".cross_attn.norm_k.")
    )


def test_training_rollout_gives_every_weight_a_gradient_text_path_included():
    """A rollout's no-grad steps fill the cache's text keys/values; the exit steps still train the text path."""
    model = _model(2).train()
    chunks, cache = _window_rollout(model, [3, 1, 2, 2])
    torch.cat([c.latents for c in chunks[2:]], dim=2).square().mean().backward()
    names = [name for name, _ in model.named_parameters()]
    # text_embedding: two linears (weight, bias); per block: k, v (weight, bias) and norm_k (weight)
    assert sum(_text_path(n) for n in names) == 4 + 5 * model.config.num_layers
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []
    assert all(kv[0].grad_fn is None for kv in cache.cross_kv)  # the cache itself holds no graph


def test_cached_exit_step_gradient_equals_the_uncached_forward():
    """One chunk at its exit step, through the cache after no-grad steps, against the plain forward."""
    model, context = _model(2), _context()
    model.train()
    x_t = torch.randn(2, 4, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.full((2,), 750.0)

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    cache = model.new_kv_cache(2, 8, 8, window_frames=4)
    with torch.no_grad():  # an earlier, gradient-free step fills the cached text keys/values
        model(x_t, torch.full((2,), 1000.0), context, kv_cache=cache, frame_offset=0)
    model(x_t, t, context, kv_cache=cache, frame_offset=0).square().mean().backward()
    cached = grads()
    model(x_t, t, context).square().mean().backward()
    plain = grads()
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert all(plain[n].abs().max() > 0 for n in plain if _text_path(n))
