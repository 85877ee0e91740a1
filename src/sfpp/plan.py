"""``python -m sfpp.plan``: memory per GPU and streaming speed of a training config, before running it.

::

    python -m sfpp.plan experiment=extend_100s trainer=fsdp trainer.devices=8 stage.student.mixed_precision=true

takes the same Hydra overrides as ``python -m sfpp.train`` and prints, per GPU:

* the bytes of every network's parameters, gradients and AdamW states (full fine-tuning or LoRA),
  the EMA copy, the frozen teacher and the critic, sharded over the data-parallel ranks when the
  strategy is FSDP2 (``trainer=fsdp``: ``ModelParallelStrategy``) and replicated otherwise, plus
  FSDP2's all-gather buffers (two blocks in compute dtype);
* the frozen text encoder (replicated) and the codec;
* the activation memory of one supervised window (a forward and backward of the generator over the
  window's frames, per GPU batch), with and without per-block activation checkpointing: measured
  exactly by running the model on fake tensors (shapes only, no memory, no weights);
* the rolling KV cache of the rollout;
* the FLOPs of one streamed chunk (every denoising step and the cache-writing pass, counted on fake
  tensors) and the frames per second that a given accelerator peak allows at full utilisation.

Nothing is loaded from disk: the networks are built from their sizes on the ``meta`` device.
Checked against memory measured on CPU for the tiny and toy models (``tests/test_plan.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.config import CausalWanConfig
from sfpp.models.flavours import flavour_config
from sfpp.models.kv_cache import RollingKVCache
from sfpp.utils.resolvers import register_resolvers

__all__ = [
    "MemoryPlan",
    "PlanSpec",
    "activation_bytes",
    "attention_flops",
    "chunk_flops",
    "main",
    "plan",
    "spec_from_config",
]

console = Console(highlight=False)

#: umT5-XXL's encoder (Wan2.1's prompt encoder): vocabulary, width, feed-forward width, layers, heads x head width.
_UMT5_XXL = {"vocab": 256384, "d_model": 4096, "d_ff": 10240, "layers": 24, "inner": 64 * 64, "heads": 64}
#: Parameters of Wan2.1's VAE (``AutoencoderKLWan``'s default sizes).
_WAN_VAE_PARAMS = 126_892_531
#: Parameters of Wan2.2's VAE (``AutoencoderKLWan`` with z_dim 48, base 160 / decoder 256, residual blocks).
_WAN2_2_VAE_PARAMS = 704_688_668
#: AdamW keeps two float32 states per trained parameter.
_ADAM_STATES = 2


def umt5_encoder_params(vocab: int, d_model: int, d_ff: int, layers: int, inner: int, heads: int) -> int:
    """Parameters of a umT5 encoder: embeddings, per layer attention (q, k, v, o), gated FFN, norms, relative bias."""
    per_layer = 4 * d_model * inner + 3 * d_model * d_ff + 2 * d_model + 32 * heads
    return vocab * d_model + layers * per_layer + d_model


@dataclass(frozen=True)
class PlanSpec:
    """Everything the planner needs of a training config.

    Attributes:
        model: The student's sizes (the teacher and critic are the same network, bidirectional).
        num_frames_per_chunk: Latent frames per streamed chunk.
        batch_size: Videos per GPU per step.
        window_frames: Latent frames of the supervised window.
        rollout_frames: Latent frames of the rollout.
        latent_shape: ``(C, H, W)`` of a latent frame.
        cache_window_frames: Past frames of the rolling KV cache.
        sink_frames: Sink frames of the cache.
        text_tokens: Prompt tokens of the text encoder.
        world_size: Processes of the run.
        sharded: FSDP2 (``ModelParallelStrategy``): networks sharded over ``world_size``.
        mixed_precision: bf16 compute (FSDP2's policy); float32 otherwise.
        activation_checkpointing: Per-block activation checkpointing.
        critic: The stage trains a critic (DMD).
        teacher: The stage holds a frozen teacher.
        lora_rank: LoRA rank (``None``: full fine-tuning).
        lora_targets: Substrings of the linears LoRA adapts.
        text_params: Parameters of the frozen text encoder.
        text_bytes_per_param: Its bytes per parameter.
        codec_params: Parameters of the codec (0 for the pixel codec).
        sampler_steps: Denoising steps of the few-step sampler.
        temporal_stride: Pixel frames per latent frame of the codec.
    """

    model: CausalWanConfig
    num_frames_per_chunk: int
    batch_size: int
    window_frames: int
    rollout_frames: int
    latent_shape: tuple[int, int, int]
    cache_window_frames: int
    sink_frames: int = 0
    text_tokens: int = 512
    world_size: int = 1
    sharded: bool = False
    mixed_precision: bool = False
    activation_checkpointing: bool = False
    critic: bool = True
    teacher: bool = True
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "ffn.0", "ffn.2")
    text_params: int = 0
    text_bytes_per_param: int = 2
    codec_params: int = 0
    sampler_steps: int = 4
    temporal_stride: int = 1

    @property
    def compute_bytes(self) -> int:
        """Bytes of one value in compute (bf16 under mixed precision)."""
        return 2 if self.mixed_precision else 4

    @property
    def compute_dtype(self) -> torch.dtype:
        """The compute dtype."""
        return torch.bfloat16 if self.mixed_precision else torch.float32

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame after patching."""
        _, height, width = self.latent_shape
        return (height // self.model.patch_size[1]) * (width // self.model.patch_size[2])


@dataclass
class MemoryPlan:
    """Bytes per GPU by item, the activation options, the cache, and the speed bound.

    Attributes:
        rows: ``[(item, bytes per GPU, note)]`` of what stays allocated during training.
        activations: Activation bytes of one window, ``{"full": ..., "checkpointed": ...}``.
        cache_bytes: The rolling KV cache of the rollout.
        chunk_flops: FLOPs of one streamed chunk (all denoising steps and the cache pass).
        pixel_frames_per_chunk: Pixel frames a chunk decodes to.
        spec: The spec planned.
    """

    rows: list[tuple[str, int, str]]
    activations: dict[str, int]
    cache_bytes: int
    chunk_flops: int
    pixel_frames_per_chunk: int
    spec: PlanSpec = field(repr=False)

    @property
    def states_bytes(self) -> int:
        """What stays allocated: parameters, gradients, optimiser states, EMA, text encoder, codec."""
        return sum(row[1] for row in self.rows)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak per GPU: the states, the activations of one window (as configured) and the cache."""
        kind = "checkpointed" if self.spec.activation_checkpointing else "full"
        return self.states_bytes + self.activations[kind] + self.cache_bytes

    def fps_at(self, peak_tflops: float) -> float:
        """Streamed frames per second at ``peak_tflops`` fully used (an upper bound)."""
        return self.pixel_frames_per_chunk * peak_tflops * 1e12 / max(self.chunk_flops, 1)

    def as_dict(self, peak_tflops: float) -> dict[str, Any]:
        """JSON-ready summary."""
        spec = asdict(self.spec)
        spec["model"] = asdict(self.spec.model)
        return {
            "rows": [{"item": item, "bytes": value, "note": note} for item, value, note in self.rows],
            "activations": self.activations,
            "cache_bytes": self.cache_bytes,
            "states_bytes": self.states_bytes,
            "peak_bytes": self.peak_bytes,
            "chunk_flops": self.chunk_flops,
            "peak_tflops": peak_tflops,
            "fps_bound": self.fps_at(peak_tflops),
            "spec": spec,
        }


def _network(
    spec: PlanSpec, causal: bool, num_layers: int | None = None, dtype: torch.dtype = torch.float32
) -> CausalWanDiT:
    """The student (``causal``) or teacher network of the spec with ``dtype`` weights, on the current device."""
    config = spec.model.replace(
        causal=causal,
        num_frames_per_chunk=spec.num_frames_per_chunk,
        num_layers=num_layers or spec.model.num_layers,
        attention_backend="sdpa",
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the dtype: fake tensors cannot be converted in place
    try:
        return CausalWanDiT(config)
    finally:
        torch.set_default_dtype(default)


def _lora_params(model: CausalWanDiT, rank: int, targets: Sequence[str]) -> int:
    """Parameters of rank-``rank`` adapters (``A: r x in``, ``B: out x r``) on the matching linears of the blocks."""
    total = 0
    for name, module in model.blocks.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def _model_fake_inputs(spec: PlanSpec, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    channels, height, width = spec.latent_shape
    dtype = spec.compute_dtype
    x = torch.randn(spec.batch_size, channels, frames, height, width, dtype=dtype)
    t = torch.full((spec.batch_size,), 500.0)
    context = torch.randn(spec.batch_size, spec.text_tokens, spec.model.text_dim, dtype=dtype)
    return x, t, context


def _activation_bytes_of(spec: PlanSpec, num_layers: int, checkpointed: bool) -> int:
    """Peak bytes of a generator forward and backward over one window, beyond its weights and gradients."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from sfpp.models.parallelize import apply_activation_checkpointing

    with FakeTensorMode():
        model = _network(spec, True, num_layers, spec.compute_dtype)
        if checkpointed:
            apply_activation_checkpointing(model)
        x, t, context = _model_fake_inputs(spec, spec.window_frames)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            model(x, t, context).float().square().mean().backward()
        peak = tracker.get_tracker_snapshot("peak")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    total = sum(int(by_kind["Total"]) for by_kind in peak.values())
    return max(total - 2 * weights, 0)  # the weights and their gradients are counted in the rows


def activation_bytes(spec: PlanSpec, checkpointed: bool) -> int:
    """Activation bytes of one window at the spec's depth: one block measured, the rest extrapolated.

    The model runs on fake tensors (no memory) with one and with two blocks; every further block
    adds what the second one added.
    """
    one = _activation_bytes_of(spec, 1, checkpointed)
    if spec.model.num_layers == 1:
        return one
    two = _activation_bytes_of(spec, 2, checkpointed)
    return one + (spec.model.num_layers - 1) * max(two - one, 0)


def chunk_flops(spec: PlanSpec) -> int:
    """FLOPs of one streamed chunk of one video with a full cache: every denoising step and the cache pass."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    per_layer = []
    for layers in (1, 2):
        with FakeTensorMode():
            model = _network(spec, True, layers, spec.compute_dtype)
            chunk = spec.num_frames_per_chunk
            one = replace(spec, batch_size=1)
            x, t, context = _model_fake_inputs(one, chunk)
            cache = _rolling_cache(spec, layers, batch_size=1)
            with torch.no_grad():
                offset = 0
                while offset + chunk <= spec.cache_window_frames + spec.sink_frames:  # fill the cache
                    model(x, t, context, kv_cache=cache, frame_offset=offset, write_cache=True)
                    offset += chunk
                with FlopCounterMode(display=False) as counter:
                    for _ in range(spec.sampler_steps):
                        model(x, t, context, kv_cache=cache, frame_offset=offset)
                    model(x, t, context, kv_cache=cache, frame_offset=offset, write_cache=True)
        counted_attention = any("attention" in str(op) for op in counter.get_flop_counts().get("Global", {}))
        per_layer.append(counter.get_total_flops())
    total = per_layer[0] + (spec.model.num_layers - 1) * (per_layer[1] - per_layer[0])
    # PyTorch's counter has no formula for the CPU attention kernels the fake tensors run: add the
    # attention products analytically when it counted none.
    return total if counted_attention else total + attention_flops(spec)


def attention_flops(spec: PlanSpec) -> int:
    """FLOPs of the attention products of one streamed chunk with a full cache (one video).

    Per layer and model call: ``Q K^T`` and the weighted sum of ``V``, ``2 x 2 x q x k x dim`` each
    for self-attention over the cache and the chunk and for cross-attention over the text, with
    ``q`` the chunk's tokens; ``sampler_steps`` calls and the cache pass.
    """
    queries = spec.num_frames_per_chunk * spec.tokens_per_frame
    keys = (spec.cache_window_frames + spec.sink_frames + spec.num_frames_per_chunk) * spec.tokens_per_frame
    per_call = 4 * queries * (keys + spec.text_tokens) * spec.model.dim
    return spec.model.num_layers * per_call * (spec.sampler_steps + 1)


def _rolling_cache(spec: PlanSpec, num_layers: int, batch_size: int, device: str = "cpu") -> RollingKVCache:
    """The rollout's :class:`~sfpp.models.kv_cache.RollingKVCache` (``meta``: its size without memory)."""
    return RollingKVCache(
        num_layers,
        batch_size,
        spec.model.num_heads,
        spec.model.dim // spec.model.num_heads,
        spec.tokens_per_frame,
        spec.num_frames_per_chunk,
        spec.cache_window_frames,
        spec.sink_frames,
        dtype=spec.compute_dtype,
        device=device,
    )


def cache_bytes(spec: PlanSpec) -> int:
    """Bytes of the rollout's rolling KV cache: self-attention slots and the text's cross-attention K/V."""
    self_kv = _rolling_cache(spec, spec.model.num_layers, spec.batch_size, device="meta").nbytes
    text_kv = 2 * spec.model.num_layers * spec.batch_size * spec.text_tokens * spec.model.dim
    return self_kv + text_kv * spec.compute_bytes


def plan(spec: PlanSpec) -> MemoryPlan:
    """The memory and speed plan of a spec (see the module docstring for what each row holds)."""
    with torch.device("meta"):
        student = _network(spec, causal=True)
    params = sum(p.numel() for p in student.parameters())
    block = sum(p.numel() for p in student.blocks[0].parameters())
    trained = params if spec.lora_rank is None else _lora_params(student, spec.lora_rank, spec.lora_targets)
    adapters = 0 if spec.lora_rank is None else trained  # LoRA adds its adapters to the frozen weights
    shards = spec.world_size if spec.sharded else 1
    where = f"sharded over {shards}" if spec.sharded else "replicated"
    lora = "" if spec.lora_rank is None else f", LoRA r={spec.lora_rank}"

    def part(count: int, bytes_per: int) -> int:
        return -(-count * bytes_per // shards)

    rows = [
        ("generator parameters", part(params + adapters, 4), f"{params / 1e6:.1f} M float32{lora}, {where}"),
        ("generator gradients", part(trained, 4), f"{trained / 1e6:.2f} M trained"),
        ("generator AdamW states", part(trained, 4 * _ADAM_STATES), "2 float32 states per trained parameter"),
        ("EMA of the generator", part(trained, 4), "float32 copy of what is trained"),
    ]
    if spec.critic:
        rows += [
            ("critic parameters", part(params + adapters, 4), f"a trainable copy of the teacher{lora}"),
            ("critic gradients", part(trained, 4), ""),
            ("critic AdamW states", part(trained, 4 * _ADAM_STATES), ""),
        ]
    if spec.teacher:
        rows.append(("teacher parameters", part(params, 4), f"frozen, float32, {where}"))
    if spec.sharded:
        networks = 1 + int(spec.critic) + int(spec.teacher)
        rows.append(
            (
                "FSDP2 all-gather buffers",
                2 * block * spec.compute_bytes,
                f"two unsharded blocks in compute dtype (one network computes at a time; {networks} sharded)",
            )
        )
    if spec.text_params:
        rows.append(
            (
                "text encoder",
                spec.text_params * spec.text_bytes_per_param,
                f"{spec.text_params / 1e9:.2f} B parameters, frozen, replicated",
            )
        )
    if spec.codec_params:
        rows.append(("codec", spec.codec_params * 2, f"{spec.codec_params / 1e6:.0f} M parameters, bf16"))
    activations = {
        "full": activation_bytes(spec, checkpointed=False),
        "checkpointed": activation_bytes(spec, checkpointed=True),
    }
    return MemoryPlan(
        rows,
        activations,
        cache_bytes(spec),
        chunk_flops(spec),
        spec.num_frames_per_chunk * spec.temporal_stride,
        spec,
    )


# -- from a Hydra config ------------------------------------------------------------------------


def _wan_vae_params(latent_channels: int) -> int:
    """Parameters of the Wan VAE whose latents a model takes: Wan2.2's (48 channels) or Wan2.1's."""
    return _WAN2_2_VAE_PARAMS if latent_channels == 48 else _WAN_VAE_PARAMS


def _flavour_of(node: Any) -> CausalWanConfig:
    fields = {k: v for k, v in dict(node).items() if k in CausalWanConfig.__dataclass_fields__}
    return flavour_config(node.flavour, **fields)


def spec_from_config(cfg: DictConfig) -> PlanSpec:
    """The :class:`PlanSpec` of a composed ``conf/train.yaml`` (nothing instantiated but lengths).

    Raises:
        ValueError: For a stage the planner does not know (DMD, GRPO, ODE init and the teacher are known).
    """
    from sfpp.diffusion.lengths import VideoTiming

    stage = cfg.stage
    target = str(stage._target_)
    student = stage.student if "student" in stage else stage  # DMD and GRPO keep these in stage.student
    known = {"DMDModule": (True, True), "GRPOModule": (False, False), "ODEInitModule": (False, False)}
    name = target.rsplit(".", 1)[-1]
    if name not in known and name != "TeacherModule":
        raise ValueError(f"sfpp.plan knows the DMD, GRPO, ODE-init and teacher stages, not {target}")
    critic, teacher = known.get(name, (False, False))
    model = _flavour_of(cfg.model)
    chunk = int(cfg.model.get("num_frames_per_chunk", 1))
    codec = str(cfg.codec._target_)
    stride = 4 if codec.endswith("WanVAECodec") else 1
    timing = VideoTiming(
        fps=float(student.get("fps", 16.0)), temporal_stride=stride, num_frames_per_chunk=chunk
    )
    rollout = timing.parse_length(stage.get("rollout_frames", stage.get("num_frames", chunk)))
    window = timing.parse_length(stage.get("window_frames", rollout))
    text = str(cfg.text._target_)
    if text.endswith("UMT5TextEncoder"):
        text_params, text_tokens = umt5_encoder_params(**_UMT5_XXL), int(cfg.text.get("max_length", 512))
    else:
        text_params, text_tokens = 0, 16
    strategy = cfg.trainer.get("strategy")
    sharded = isinstance(strategy, DictConfig) and "ModelParallelStrategy" in str(
        strategy.get("_target_", "")
    )
    devices = cfg.trainer.get("devices", 1)
    devices = int(devices) if str(devices).isdigit() else 1
    lora = stage.get("lora")
    return PlanSpec(
        model=model,
        num_frames_per_chunk=chunk,
        batch_size=int(cfg.data.get("batch_size", 1)),
        window_frames=window,
        rollout_frames=rollout,
        latent_shape=tuple(student.latent_shape),
        cache_window_frames=int(student.get("cache_window_frames") or window),
        sink_frames=int(student.get("sink_frames", 0)),
        text_tokens=text_tokens,
        world_size=devices * int(cfg.trainer.get("num_nodes", 1)),
        sharded=sharded,
        mixed_precision=bool(student.get("mixed_precision", False)),
        activation_checkpointing=bool(student.get("activation_checkpointing", False)),
        critic=critic,
        teacher=teacher,
        lora_rank=None if lora is None else int(lora.get("rank", 32)),
        text_params=text_params,
        codec_params=_wan_vae_params(model.in_channels) if stride == 4 else 0,
        sampler_steps=len(stage.sampler.get("steps", [0] * 4)) if "sampler" in stage else 4,
        temporal_stride=stride,
    )


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.1f} MiB"


def _flops(value: int) -> str:
    return f"{value / 1e12:.2f} TFLOP" if value >= 1e11 else f"{value / 1e9:.2f} GFLOP"


def show(result: MemoryPlan, peak_tflops: float) -> None:
    """Print the plan as a table."""
    spec = result.spec
    table = Table(title=f"per GPU ({spec.world_size} process(es), batch {spec.batch_size} per GPU)")
    table.add_column("item")
    table.add_column("bytes", justify="right")
    table.add_column("note")
    for item, value, note in result.rows:
        table.add_row(item, _gib(value), note)
    used = "checkpointed" if spec.activation_checkpointing else "full"
    for kind in ("full", "checkpointed"):
        marker = " (configured)" if kind == used else ""
        table.add_row(
            f"activations, {kind}{marker}",
            _gib(result.activations[kind]),
            f"one window: {spec.window_frames} latent frames x {spec.tokens_per_frame} tokens, "
            f"{'bf16' if spec.mixed_precision else 'float32'}",
        )
    table.add_row(
        "rolling KV cache",
        _gib(result.cache_bytes),
        f"{spec.cache_window_frames} + {spec.num_frames_per_chunk} frames",
    )
    table.add_row(
        "[bold]estimated peak[/]", f"[bold]{_gib(result.peak_bytes)}[/]", "states + activations + cache"
    )
    console.print(table)
    console.print(
        f"one chunk ({spec.num_frames_per_chunk} latent = {result.pixel_frames_per_chunk} frames, "
        f"{spec.sampler_steps} steps + cache pass): {_flops(result.chunk_flops)}; at "
        f"{peak_tflops:g} TFLOP/s fully used: {result.fps_at(peak_tflops):.1f} frames/s (an upper bound)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: Hydra overrides of ``conf/train.yaml`` and ``--peak-tflops`` / ``--json``."""
    from hydra import compose, initialize_config_dir

    from sfpp.utils.config_dir import find_config_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m sfpp.train")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="accelerator peak in TFLOP/s (989: H100 dense bf16)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the plan as JSON here")
    args = parser.parse_args(argv)
    overrides = [*args.overrides]
    if not any(o.startswith("wan_dir=") for o in overrides):
        overrides.append("++wan_dir=unused")  # the planner never reads the weights
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="plan"):
        cfg = compose(config_name="train", overrides=overrides)
    try:
        spec = spec_from_config(cfg)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(2)
    result = plan(spec)
    show(result, args.peak_tflops)
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_dict(args.peak_tflops), indent=2) + "\n")


if __name__ == "__main__":
    main()
