"""sfpp against golden numbers produced by Self-Forcing's own code (guandeh17/Self-Forcing).

``tests/golden/self_forcing/`` holds only numbers: three tiny seeded models (a causal generator, a
bidirectional teacher and critic, in the original Wan layout), the inputs, and what the reference
computed from them. ``tests/golden/self_forcing/README.md`` says how they were made. The tests run
sfpp on the same weights and inputs:

* the warped 4-step schedule;
* the real score with CFG and the normalised DMD gradient (the reference's ``guidance_scale: 3.0``
  is sfpp's ``real_guidance_scale: 4.0``);
* the DMD loss and its gradient, with and without the masked first chunk;
* cached inference with a global cache, a rolling window, sink frames and context noise;
* a training rollout (exit steps 0, 2, 3): its output and the gradient of every parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sfpp.diffusion import FewStepSampler, add_noise, stream_rollout, x0_from_flow
from sfpp.diffusion.losses import dmd_loss, real_and_fake_x0
from sfpp.models import CausalWanDiT
from sfpp.models.wan import build_from_pretrained
from sfpp.models.wan.keys import original_to_wan_state_dict

GOLDEN = Path(__file__).parent / "golden" / "self_forcing"
STEPS = [1000, 750, 500, 250]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "golden.safetensors"))


@pytest.fixture(scope="module")
def cases() -> dict:
    return json.loads((GOLDEN / "cases.json").read_text())


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, relative: float = 2e-5) -> None:
    """Largest difference within ``relative`` of the largest magnitude (float32 against the reference's mixes of float32/64)."""
    scale = expected.abs().max().clamp_min(1e-12)
    error = (actual.to(expected.dtype) - expected).abs().max()
    assert error <= relative * scale, (
        f"max |difference| {error:.3g} > {relative:g} x max |expected| {scale:.3g}"
    )


def _model(name: str, causal: bool) -> CausalWanDiT:
    return build_from_pretrained(
        GOLDEN / name, causal=causal, num_frames_per_chunk=3, attention_backend="sdpa"
    )


@pytest.fixture(scope="module")
def scores() -> tuple[CausalWanDiT, CausalWanDiT]:
    return _model("teacher", False), _model("critic", False)


def test_the_warped_schedule_is_the_references(golden):
    sampler = FewStepSampler.from_steps(STEPS, shift=5.0)
    torch.testing.assert_close(torch.tensor(sampler.timesteps), golden["schedule.warped_timesteps"])


def test_real_score_with_guidance_and_the_dmd_gradient(golden, scores, cases):
    """Self-Forcing's ``cond + 3 (cond - uncond)`` is ``real_guidance_scale=4`` here, and only that."""
    assert cases["dmd"]["guidance_scale"] == 3.0
    teacher, critic = scores
    x0, x_t, t = golden["dmd.x0"], golden["kl_grad.x_t"], golden["kl_grad.timestep"]
    expected = golden["kl_grad.grad"]

    def grad(guidance: float) -> torch.Tensor:
        real, fake = real_and_fake_x0(
            teacher, critic, x_t, t, t / 1000, golden["context.cond"], golden["context.uncond"], guidance
        )
        return (fake - real) / (x0 - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)

    _assert_close(grad(4.0), expected)
    assert (grad(3.0) - expected).abs().max() > 0.1  # the same number in the other convention


@pytest.mark.parametrize("masked", [False, True])
def test_dmd_loss_and_its_gradient(golden, scores, masked):
    """The loss and d loss / d x0; with the masked chunk, a mean over the unmasked elements."""
    tag = "dmd_loss_masked" if masked else "dmd_loss"
    teacher, critic = scores
    x0 = golden["dmd.x0"]
    sigma = golden[f"{tag}.sigma"]  # the reference rounds the noise level to its 1000-step grid
    x_t = add_noise(x0, golden[f"{tag}.noise"], sigma)
    real, fake = real_and_fake_x0(
        teacher,
        critic,
        x_t,
        golden[f"{tag}.timestep"],
        sigma,
        golden["context.cond"],
        golden["context.uncond"],
        4.0,
    )
    mask = None
    if masked:
        mask = torch.ones(1, 1, x0.shape[2], 1, 1, dtype=torch.bool)  # (1, 1, F, 1, 1)
        mask[:, :, :3] = False
    leaf = x0.clone().requires_grad_(True)
    loss, _ = dmd_loss(leaf, real, fake, gradient_mask=mask)
    loss.backward()
    torch.testing.assert_close(loss.reshape(1), golden[f"{tag}.loss"], rtol=1e-5, atol=1e-6)
    _assert_close(leaf.grad, golden[f"{tag}.x0_grad"])


def _reference_order_rollout(
    model: CausalWanDiT,
    context: torch.Tensor,
    cache,
    noise: torch.Tensor,
    mixed_noise: torch.Tensor,
    mixed_sigmas: torch.Tensor,
    context_timestep: float,
    exit_steps: list[int],
    grad: bool,
) -> torch.Tensor:
    """sfpp's cached forward and cache write, fed the reference's draws in the reference's order.

    The reference mixes noise into the clean pass's input at the nearest point of its 1000-step
    grid, even at ``context_noise = 0`` (sigma 0.005); the recorded sigma and noise reproduce that.
    """
    sigmas = [t / 1000 for t in FewStepSampler.from_steps(STEPS, shift=5.0).timesteps]
    timesteps = FewStepSampler.from_steps(STEPS, shift=5.0).timesteps
    draws: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(zip(mixed_noise, mixed_sigmas, strict=True))
    batch, chunk = noise.shape[0], model.config.num_frames_per_chunk
    outputs = []
    for index, start in enumerate(range(0, noise.shape[2], chunk)):
        x_t = noise[:, :, start : start + chunk]
        for step in range(exit_steps[index] + 1):
            with torch.set_grad_enabled(grad and step == exit_steps[index]):
                flow = model(
                    x_t, torch.full((batch,), timesteps[step]), context, kv_cache=cache, frame_offset=start
                )
                x0 = x0_from_flow(flow, x_t, sigmas[step])
            if step < exit_steps[index]:
                renoise, _ = next(draws)
                x_t = add_noise(x0.detach(), renoise, sigmas[step + 1])
        outputs.append(x0)
        context_noise, context_sigma = next(draws)
        cache_input = add_noise(x0.detach(), context_noise, context_sigma[:, None, None, None, None])
        model.write_chunk(
            cache_input, torch.full((batch,), context_timestep), context, kv_cache=cache, frame_offset=start
        )
    assert next(draws, None) is None  # every draw of the reference was used
    return torch.cat(outputs, dim=2)  # (B, C, F, H, W)


def _cache_geometry(case: dict) -> tuple[int, int]:
    """``(window_frames, sink_frames)`` of the reference's ``local_attn_size`` and ``sink_size``.

    The reference's local attention counts the current chunk and the sinks; sfpp's window is the
    past frames kept besides them.
    """
    if case.get("local_attn_size", -1) == -1:
        return case["num_frames"], 0
    sink = case.get("sink_size", 0)
    return case["local_attn_size"] - sink - 3, sink


@pytest.mark.parametrize("tag", ["global", "rolling", "sink", "context_noise"])
def test_cached_inference(golden, cases, tag):
    case = cases["inference_cases"][tag]
    model = _model("generator", True)
    window, sink = _cache_geometry(case)
    cache = model.new_kv_cache(1, 8, 8, window_frames=window, sink_frames=sink)
    with torch.no_grad():
        out = _reference_order_rollout(
            model,
            golden["context.cond"][:1],
            cache,
            golden[f"inference.{tag}.noise"],
            golden[f"inference.{tag}.mixed_noise"],
            golden[f"inference.{tag}.mixed_sigmas"],
            float(case.get("context_noise", 0)),
            [3] * (case["num_frames"] // 3),
            grad=False,
        )
    _assert_close(out, golden[f"inference.{tag}.output"])


def test_stream_rollout_is_the_reference_order_with_exact_sigmas(golden, cases):
    """:func:`stream_rollout` (context noise included) is the loop above with exact sigmas."""
    case = cases["inference_cases"]["context_noise"]
    model = _model("generator", True)
    window, sink = _cache_geometry(case)
    mixed = golden["inference.context_noise.mixed_noise"]
    sampler = FewStepSampler.from_steps(STEPS, shift=5.0, context_timestep=case["context_noise"])
    exact = torch.tensor(
        [[s] for s in sampler.sigmas[1:] + [sampler.context_sigma]] * (case["num_frames"] // 3)
    )
    draws = iter(list(mixed))
    with torch.no_grad():
        streamed = torch.cat(
            [
                c.latents
                for c in stream_rollout(
                    model,
                    golden["context.cond"][:1],
                    model.new_kv_cache(1, 8, 8, window_frames=window, sink_frames=sink),
                    case["num_frames"],
                    (4, 8, 8),
                    sampler,
                    initial_noise=golden["inference.context_noise.noise"],
                    noise_fn=lambda shape: next(draws),
                )
            ],
            dim=2,
        )
        looped = _reference_order_rollout(
            model,
            golden["context.cond"][:1],
            model.new_kv_cache(1, 8, 8, window_frames=window, sink_frames=sink),
            golden["inference.context_noise.noise"],
            mixed,
            exact,
            float(case["context_noise"]),
            [3] * (case["num_frames"] // 3),
            grad=False,
        )
    torch.testing.assert_close(streamed, looped, rtol=1e-5, atol=1e-6)


def test_training_rollout_output_and_every_parameter_gradient(golden, cases):
    """Exit steps 0, 2, 3: the graph of each exit step, the text path included, as the reference's."""
    model = _model("generator", True).train()
    exits = cases["training"]["exit_steps"]
    cache = model.new_kv_cache(1, 8, 8, window_frames=cases["training"]["num_frames"])
    out = _reference_order_rollout(
        model,
        golden["context.cond"][:1],
        cache,
        golden["training.noise"],
        golden["training.mixed_noise"],
        golden["training.mixed_sigmas"],
        0.0,
        exits,
        grad=True,
    )
    _assert_close(out.detach(), golden["training.output"])
    (out.double() * golden["training.loss_weights"].double()).sum().backward()
    prefix = "training.grad."
    expected = original_to_wan_state_dict(
        {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    )
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert sorted(expected) == sorted(grads)
    text_path = [
        n for n in grads if n.startswith("text_embedding.") or ".cross_attn.k." in n or ".cross_attn.v." in n
    ]
    assert text_path and all(expected[n].abs().max() > 0 for n in text_path)
    for name, grad in grads.items():
        _assert_close(grad.double(), expected[name].double(), relative=2e-4)
