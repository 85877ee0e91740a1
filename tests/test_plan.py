"""sfpp.plan: its memory estimate against memory measured on CPU, and its reading of the configs."""

import copy
import json

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker

from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.flavours import flavour_config
from sfpp.models.kv_cache import RollingKVCache
from sfpp.models.parallelize import apply_activation_checkpointing
from sfpp.plan import PlanSpec, cache_bytes, main, plan, umt5_encoder_params


def _spec(flavour, checkpointed, **kw):
    kw = {"critic": False, "teacher": False, "batch_size": 4, **kw}
    return PlanSpec(
        model=flavour_config(flavour, in_channels=3, out_channels=3, patch_size=(1, 4, 4)),
        num_frames_per_chunk=2,
        window_frames=8,
        rollout_frames=8,
        latent_shape=(3, 32, 32),
        cache_window_frames=6,
        text_tokens=16,
        activation_checkpointing=checkpointed,
        **kw,
    )


def _measured_peak(spec):
    """Peak bytes of real training steps (forward, backward, AdamW) of the generator with its EMA copy.

    The second step is measured: the optimiser's states exist from the first step on.
    """
    torch.manual_seed(0)
    model = CausalWanDiT(spec.model.replace(causal=True, num_frames_per_chunk=2, attention_backend="sdpa"))
    if spec.activation_checkpointing:
        apply_activation_checkpointing(model)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    x = torch.randn(spec.batch_size, 3, spec.window_frames, *spec.latent_shape[1:])
    context = torch.randn(spec.batch_size, spec.text_tokens, spec.model.text_dim)
    timestep = torch.full((spec.batch_size,), 500.0)

    def step():
        model(x, timestep, context).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimiser's states exist from here on
    tracker = MemTracker()
    tracker.track_external(model, ema, optimizer)
    with tracker:
        step()
    return sum(int(by_kind["Total"]) for by_kind in tracker.get_tracker_snapshot("peak").values())


@pytest.mark.parametrize("flavour", ["tiny", "toy"])
@pytest.mark.parametrize("checkpointed", [False, True])
def test_the_estimate_is_within_25_percent_of_the_measured_peak(flavour, checkpointed):
    spec = _spec(flavour, checkpointed)
    result = plan(spec)
    estimate = result.peak_bytes - result.cache_bytes  # a training step over a window holds no cache
    measured = _measured_peak(spec)
    assert abs(estimate - measured) <= 0.25 * measured, (estimate, measured)
    # checkpointing keeps less; more videos per step need more activations
    assert result.activations["checkpointed"] < result.activations["full"]
    assert (
        plan(_spec(flavour, checkpointed, batch_size=8)).activations["full"]
        > 1.5 * result.activations["full"]
    )


def test_sharding_lora_and_the_cache():
    base = _spec("toy", False, critic=True, teacher=True)
    rows = dict((item, value) for item, value, _ in plan(base).rows)
    sharded = dict(
        (i, v) for i, v, _ in plan(PlanSpec(**{**base.__dict__, "world_size": 8, "sharded": True})).rows
    )
    assert sharded["generator AdamW states"] == pytest.approx(rows["generator AdamW states"] / 8, abs=8)
    assert "FSDP2 all-gather buffers" in sharded and "FSDP2 all-gather buffers" not in rows
    lora = dict((i, v) for i, v, _ in plan(PlanSpec(**{**base.__dict__, "lora_rank": 8})).rows)
    assert lora["generator AdamW states"] < rows["generator AdamW states"] / 10
    assert (
        lora["generator parameters"] > rows["generator parameters"]
    )  # adapters on top of the frozen weights
    # the cache's formula equals the buffers of a real RollingKVCache (self-attention part)
    cache = RollingKVCache(4, 4, 4, 64, base.tokens_per_frame, 2, 6)
    text = 2 * 4 * 4 * base.text_tokens * base.model.dim * 4
    assert cache_bytes(base) - text == cache.keys.nbytes + cache.values.nbytes
    # umT5-XXL's encoder, Wan2.1's prompt encoder, has about 5.7 B parameters
    assert umt5_encoder_params(256384, 4096, 10240, 24, 4096, 64) == pytest.approx(5.68e9, rel=0.01)


def test_the_command_plans_extend_100s_on_8_gpus(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(
        [
            "experiment=extend_100s",
            "trainer=fsdp",
            "trainer.devices=8",
            "stage.student.mixed_precision=true",
            "stage.student.activation_checkpointing=true",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    spec = data["spec"]
    assert spec["world_size"] == 8 and spec["sharded"] and spec["window_frames"] == 21
    assert spec["rollout_frames"] == 399 and spec["latent_shape"] == [16, 60, 104] and spec["mixed_precision"]
    rows = {row["item"]: row["bytes"] for row in data["rows"]}
    # Wan2.1-1.3B: 1.42 B float32 parameters, an eighth per GPU
    assert rows["generator parameters"] == pytest.approx(1.419e9 * 4 / 8, rel=0.01)
    assert data["activations"]["checkpointed"] < data["activations"]["full"] / 5
    assert data["peak_bytes"] < 80 * 2**30  # fits an 80 GB GPU with checkpointing, as Self-Forcing trains
    assert data["fps_bound"] > 16  # real time is within the bound of a 989 TFLOP/s accelerator
    assert "estimated peak" in capsys.readouterr().out
    # The chunk's FLOPs include attention: against the analytic count of the GPU check (linears,
    # self-attention over the 21-frame window, cross-attention over 512 text tokens, 4 steps + the
    # cache pass; 1.3B: dim 1536, ffn 8960, 30 layers, 3 x 1560 tokens per chunk)
    tokens, dim, ffn = 3 * 1560, 1536, 8960
    analytic = 5 * 30 * (2 * tokens * (6 * dim * dim + 2 * dim * ffn) + 4 * tokens * (21 * 1560 + 512) * dim)
    assert data["chunk_flops"] == pytest.approx(analytic, rel=0.05)


def test_attention_flops_are_the_analytic_count():
    from sfpp.plan import attention_flops

    spec = _spec("tiny", checkpointed=False)
    queries = spec.num_frames_per_chunk * spec.tokens_per_frame
    keys = (spec.cache_window_frames + spec.sink_frames + spec.num_frames_per_chunk) * spec.tokens_per_frame
    expected = (
        spec.model.num_layers
        * (spec.sampler_steps + 1)
        * 4
        * queries
        * (keys + spec.text_tokens)
        * spec.model.dim
    )
    assert attention_flops(spec) == expected > 0
