"""FSDP2 sharding and activation checkpointing of :class:`CausalWanDiT` (the model code knows none of it).

How to run it::

    python -m sfpp.train experiment=extend_100s trainer=fsdp trainer.devices=8

``trainer=fsdp`` selects Lightning's ``ModelParallelStrategy`` with a one-dimensional data-parallel
mesh over every process; each stage's ``configure_model`` then calls :func:`parallelize_stage_modules`
on its networks. Why ``ModelParallelStrategy`` and not Lightning's ``FSDPStrategy``: the
distillation stages (DMD, GRPO) train two networks with two optimisers under manual optimisation,
which ``FSDPStrategy`` refuses (it also refuses CPU). ``ModelParallelStrategy`` leaves the
parallelisation to the module and works with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``)
on CUDA (NCCL) and on CPU (gloo).

What is sharded (FSDP2, parameters, gradients and optimiser states split over the data-parallel
ranks, all-gathered unit by unit for compute):

* every :class:`CausalWanDiT` of a stage: the generator and the critic (trained), the teacher and the
  EMA copy (frozen: sharded to save memory, no optimiser). Units, innermost first: each block's
  cross-attention (its own unit, so that ``cross_attn.text_kv``, which the model calls outside the
  block's ``forward``, is registered as an FSDP forward method and sees unsharded weights), each
  :class:`WanBlock`, then the root (embeddings, head);
* a trainable text encoder (the built-in world's), as one unit, so that its gradients are reduced;
  a frozen one (umT5) stays replicated on every rank.

Options, all explicit (nothing is silently ignored):

* ``mixed_precision``: bf16 parameters for compute, float32 gradient reduction and float32 master
  weights (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``). CUDA only: on
  another device it raises. Wan's float32 modules stay float32: those the model lists in
  ``CausalWanDiT.keep_in_fp32_modules`` (the root's ``time_embedding`` and ``time_projection``, each
  block's affine ``LayerNorm`` ``norm3``) get their own float32 units (``layer_norm`` refuses a
  float32 input with bf16 weights). Two things do run in bf16: the
  ``modulation`` tables (bare parameters of a block, cast with it; the block upcasts them) and the
  RMS q/k norm weights (``rms_norm`` upcasts them). Leave the Trainer's ``precision`` at
  ``32-true``: the policy replaces autocast.
* ``activation_checkpointing``: each :class:`WanBlock` recomputes its activations in the backward
  pass instead of keeping them (non-reentrant ``torch.utils.checkpoint``). It exists for CUDA
  memory at the paper's scale; it works on CPU too and gives the same gradients. A block called on
  a rolling KV cache (the streaming rollout) is checkpointed with a snapshot of its layer's cached
  keys and values (``LayerKVCache.snapshot``), since later chunks overwrite the cache before the
  backward pass; a call that writes the cache, or runs without gradients, is not checkpointed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from sfpp.models.blocks import BlockCall, WanBlock
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.kv_cache import LayerCache

__all__ = [
    "apply_activation_checkpointing",
    "bf16_policies",
    "check_trainable_parameters_sharded",
    "data_parallel_mesh",
    "is_sharded",
    "parallelize_model",
    "parallelize_stage_modules",
    "shard_units",
]

# 1. Activation checkpointing ------------------------------------------------------------------


def _checkpoint_block(
    block: WanBlock,
    x: torch.Tensor,
    time_mod: torch.Tensor,
    rope: torch.Tensor,
    text_kv: tuple[torch.Tensor, torch.Tensor],
    call: BlockCall,
    cache: LayerCache | None = None,
) -> torch.Tensor:
    """Call a :class:`WanBlock` under non-reentrant activation checkpointing when that is safe.

    Without gradients there is nothing to save, and a call that writes the KV cache would write it
    again when recomputed: both run plainly. A call that reads the cache is recomputed with a
    snapshot of what it read, since later chunks overwrite the live cache before the backward pass.
    """
    if not torch.is_grad_enabled() or call.writes:
        return block(x, time_mod, rope, text_kv, call, cache)
    if cache is not None:
        cache = cache.snapshot()
    return checkpoint(block, x, time_mod, rope, text_kv, call, cache, use_reentrant=False)


def _block_of(module: nn.Module) -> WanBlock:
    """The :class:`WanBlock` inside an optional checkpoint wrapper."""
    inner = module._checkpoint_wrapped_module if isinstance(module, CheckpointWrapper) else module
    if not isinstance(inner, WanBlock):
        raise TypeError(f"expected a WanBlock in CausalWanDiT.blocks, got {type(inner).__name__}")
    return inner


def apply_activation_checkpointing(model: CausalWanDiT) -> None:
    """Wrap every block of ``model`` in a checkpoint wrapper, in place (idempotent).

    Parameter names gain a ``_checkpoint_wrapped_module.`` component, but ``state_dict`` keys do
    not (the wrapper strips it), so checkpoints load with or without checkpointing.

    Args:
        model: The network; its blocks are replaced by their wrappers.

    Raises:
        ValueError: If ``model`` is already sharded (checkpointing must be applied first).
    """
    if is_sharded(model):
        raise ValueError(
            "apply activation checkpointing before sharding: the model is already an FSDP module"
        )
    for index, block in enumerate(model.blocks):
        if not isinstance(block, CheckpointWrapper):
            model.blocks[index] = checkpoint_wrapper(_block_of(block), checkpoint_fn=_checkpoint_block)


# 2. Sharding ----------------------------------------------------------------------------------


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module`` itself."""
    return isinstance(module, FSDPModule)


def data_parallel_mesh(device_mesh: DeviceMesh) -> DeviceMesh:
    """The one-dimensional mesh to shard over.

    Lightning's ``ModelParallelStrategy`` builds a ``("data_parallel", "tensor_parallel")`` mesh;
    sfpp has no tensor-parallel plan, so the tensor-parallel size must be 1.

    Raises:
        ValueError: For a tensor-parallel size above 1 or a mesh of more than two dimensions.
    """
    names = device_mesh.mesh_dim_names or ()
    if device_mesh.ndim == 1:
        return device_mesh
    if device_mesh.ndim == 2 and names == ("data_parallel", "tensor_parallel"):
        if device_mesh["tensor_parallel"].size() != 1:
            raise ValueError(
                f"tensor_parallel_size={device_mesh['tensor_parallel'].size()}: sfpp shards with FSDP2 only; "
                "set trainer.strategy.tensor_parallel_size=1 and data_parallel_size to the number of processes"
            )
        return device_mesh["data_parallel"]
    raise ValueError(f"expected a 1-D mesh or a (data_parallel, tensor_parallel) mesh, got dims {names}")


def _policies(
    device_mesh: DeviceMesh, mixed_precision: bool
) -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """``(compute policy, float32 policy)``; refuses mixed precision off CUDA."""
    if not mixed_precision:
        return MixedPrecisionPolicy(), MixedPrecisionPolicy()
    if device_mesh.device_type != "cuda":
        raise ValueError(
            f"mixed_precision=True (bf16 FSDP2 compute) is supported on CUDA only, the mesh is on "
            f"'{device_mesh.device_type}'; set the stage's mixed_precision to false"
        )
    return bf16_policies()


def bf16_policies() -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """``(compute policy, float32 policy)`` of mixed precision: bf16 compute, float32 reduction."""
    compute = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    return compute, fp32


def shard_units(
    model: CausalWanDiT,
    mesh: DeviceMesh,
    compute: MixedPrecisionPolicy,
    fp32: MixedPrecisionPolicy | None,
    reshard_after_forward: bool,
) -> None:
    """Apply ``fully_shard`` unit by unit, innermost first (``fp32``: float32 units, or none)."""

    def shard(module: nn.Module, policy: MixedPrecisionPolicy) -> None:
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)

    if fp32 is not None:  # the model's float32 modules first: each is inside a block or the root
        for module in model.fp32_modules():
            shard(module, fp32)
    for wrapped in model.blocks:
        block = _block_of(wrapped)
        shard(block.cross_attn, compute)
        register_fsdp_forward_method(block.cross_attn, "text_kv")
        shard(wrapped, compute)
    # The root does not cast its inputs: a bf16 policy would round the float32 timesteps to bf16
    # (spacing 4 near 1000: 937.5 -> 936), every step of a bf16 run at the wrong noise level. The
    # model casts the latents and the text to its compute dtype itself.
    shard(model, dataclasses.replace(compute, cast_forward_inputs=False))
    register_fsdp_forward_method(model, "write_chunk")  # the rollouts' clean pass gathers like forward


def parallelize_model(
    model: CausalWanDiT,
    device_mesh: DeviceMesh,
    mixed_precision: bool,
    activation_checkpointing: bool,
    reshard_after_forward: bool = True,
) -> CausalWanDiT:
    """Shard a :class:`CausalWanDiT` with FSDP2, in place, optionally checkpointing its blocks.

    Order: activation checkpointing of each block (if asked), ``fully_shard`` of each block's
    cross-attention and of each block, then of the root. See the module docstring for the units and
    the mixed-precision policy.

    Args:
        model: The network (unsharded).
        device_mesh: A 1-D mesh, or Lightning's ``(data_parallel, tensor_parallel)`` mesh with a
            tensor-parallel size of 1.
        mixed_precision: bf16 compute with float32 reduction and master weights (CUDA only).
        activation_checkpointing: Recompute each block's activations in the backward pass.
        reshard_after_forward: Free the gathered parameters after each unit's forward (less memory,
            one more all-gather in the backward pass).

    Returns:
        ``model`` itself, now an FSDP module whose parameters are ``DTensor`` shards.

    Raises:
        TypeError: If ``model`` is not a :class:`CausalWanDiT`.
        ValueError: If it is already sharded, for mixed precision off CUDA, or for a mesh with
            tensor parallelism.
    """
    if not isinstance(model, CausalWanDiT):
        raise TypeError(f"parallelize_model shards a CausalWanDiT, got {type(model).__name__}")
    if is_sharded(model):
        raise ValueError("the model is already sharded; parallelize it once (see is_sharded)")
    mesh = data_parallel_mesh(device_mesh)
    compute, fp32 = _policies(mesh, mixed_precision)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    shard_units(model, mesh, compute, fp32 if mixed_precision else None, reshard_after_forward)
    return model


def parallelize_stage_modules(
    device_mesh: DeviceMesh,
    trained: Iterable[nn.Module],
    frozen: Iterable[nn.Module] = (),
    mixed_precision: bool = False,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> None:
    """Shard the networks of a training stage, in place; modules already sharded are skipped.

    A :class:`CausalWanDiT` goes through :func:`parallelize_model`; any other module (a trainable
    text encoder) becomes one FSDP unit. Activation checkpointing applies to the trained
    :class:`CausalWanDiT` only (frozen ones never run a backward pass through their weights).

    Args:
        device_mesh: See :func:`parallelize_model`.
        trained: Networks with an optimiser (generator, critic, teacher being pretrained).
        frozen: Networks without one (teacher during distillation, EMA copies).
        mixed_precision: See :func:`parallelize_model`.
        activation_checkpointing: See :func:`parallelize_model`.
        reshard_after_forward: See :func:`parallelize_model`.
    """
    mesh = data_parallel_mesh(device_mesh)
    compute, _ = _policies(mesh, mixed_precision)
    for modules, checkpointing in ((trained, activation_checkpointing), (frozen, False)):
        for module in modules:
            if is_sharded(module):
                continue
            if isinstance(module, CausalWanDiT):
                parallelize_model(module, mesh, mixed_precision, checkpointing, reshard_after_forward)
            else:
                fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=compute)


def configure_stage_modules(
    owner: nn.Module,
    device_mesh: DeviceMesh | None,
    trained: Iterable[nn.Module],
    frozen: Iterable[nn.Module] = (),
    mixed_precision: bool = False,
    activation_checkpointing: bool = False,
) -> None:
    """What a stage's ``configure_model`` does, with or without a device mesh (idempotent).

    With a mesh (``trainer=fsdp``): shard ``trained`` and ``frozen`` (see
    :func:`parallelize_stage_modules`) and check that every trainable parameter of ``owner`` is a
    shard. Without one: only activation checkpointing of the trained :class:`CausalWanDiT` models.

    Raises:
        ValueError: For ``mixed_precision`` without a mesh, or a trainable parameter left unsharded.
    """
    trained = list(trained)
    if device_mesh is None:
        if mixed_precision:
            raise ValueError(
                "mixed_precision=True is the bf16 policy of FSDP2 sharding and needs trainer=fsdp on CUDA; "
                "on a single device set it to false and use trainer.precision=bf16-mixed"
            )
        if activation_checkpointing:
            for model in trained:
                if isinstance(model, CausalWanDiT):
                    apply_activation_checkpointing(model)
        return
    parallelize_stage_modules(
        device_mesh,
        trained=trained,
        frozen=frozen,
        mixed_precision=mixed_precision,
        activation_checkpointing=activation_checkpointing,
    )
    check_trainable_parameters_sharded(owner)


def check_trainable_parameters_sharded(module: nn.Module) -> None:
    """Fail if a trainable parameter of ``module`` is not an FSDP2 shard.

    Under ``ModelParallelStrategy`` only sharded parameters get their gradients reduced across
    ranks; a trainable parameter left out would silently drift apart on every rank.

    Raises:
        ValueError: Naming the parameters left out.
    """
    missing = [n for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"trainable parameters not sharded by FSDP2: {shown}; their gradients would not be reduced "
            "across ranks. Shard their module in the stage's configure_model or freeze them"
        )
