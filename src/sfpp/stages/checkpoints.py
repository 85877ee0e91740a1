"""Load the weights of a submodule from a stage's Lightning checkpoint.

Later stages start from earlier ones: ODE init from the teacher's EMA weights, DMD from the ODE-init
student, GRPO from the DMD student, and the built-in world's frozen text encoder from the teacher's
checkpoint. A Lightning checkpoint stores ``state_dict`` keys prefixed by the attribute path of
each submodule (``ema.module.``, ``text_encoder.``, ``generator.`` ...); this module selects a
prefix and loads it, strictly, into a freshly built module, so configs can say::

    model:
      _target_: sfpp.stages.checkpoints.load_submodule
      module: {_target_: sfpp.models.build_model, flavour: toy}
      checkpoint: outputs/toy_teacher/.../last.ckpt
      prefix: ema.module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfpp.models.lora import LoraSettings, merged_state_dict
from sfpp.models.wan.keys import WanWeightsError
from sfpp.models.wan.released import read_released_state

__all__ = ["checkpoint_prefixes", "load_submodule", "plain_hyperparameters", "prime_optimizer_state"]


def _state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return _payload(checkpoint)["state_dict"]


def _payload(checkpoint: str | Path, lightning_only: bool = True) -> dict:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train the stage that writes it first or fix the path in the config"
        )
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if lightning_only and (not isinstance(payload, dict) or "state_dict" not in payload):
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return payload


def _check_shared(
    state: dict[str, torch.Tensor],
    checkpoint: str | Path,
    other: dict[str, torch.Tensor],
    other_checkpoint: str | Path,
    prefix: str,
) -> None:
    """Raise if both states hold weights under ``prefix`` and they differ."""
    mine = {k: v for k, v in state.items() if k.startswith(prefix)}
    theirs = {k: v for k, v in other.items() if k.startswith(prefix)}
    if not mine or not theirs:
        return
    same = mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k]) for k in mine
    )
    if not same:
        raise ValueError(
            f"the {prefix!r} weights of {checkpoint} differ from those of {other_checkpoint}: the first was "
            "trained with another text encoder (was the teacher retrained since?). Retrain the stages "
            "after the teacher, or point teacher_ckpt at the teacher they were trained from"
        )


def checkpoint_prefixes(checkpoint: str | Path) -> list[str]:
    """The top-level submodule prefixes stored in a checkpoint (e.g. ``['ema.', 'model.', ...]``)."""
    return sorted({key.split(".", 1)[0] + "." for key in _state_dict(checkpoint)})


def load_submodule(
    module: nn.Module,
    checkpoint: str | Path,
    prefix: str,
    shared_with: str | Path | None = None,
    shared_prefix: str = "text_encoder.",
    entry: str | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
) -> nn.Module:
    """Load the entries of ``checkpoint`` under ``prefix`` into ``module`` (strict) and return it.

    With ``shared_with``, the weights under ``shared_prefix`` must be the same in both checkpoints.
    A student stage loads its generator from the previous student and its text encoder from the
    teacher; the student only understands the encoder it was trained with, so a teacher retrained
    after the student (whose world text encoder is trained with it) must stop the run rather than
    give the student conditioning it has never seen.

    Args:
        module: A freshly built module with the same architecture as the saved one.
        checkpoint: Path of a Lightning ``.ckpt``.
        prefix: Attribute path of the submodule in the saving LightningModule, with a trailing dot
            (``ema.module.`` for the teacher's EMA weights, ``text_encoder.``, ``generator.``).
        shared_with: Another checkpoint (the teacher's) that must hold the same ``shared_prefix``
            weights. Checkpoints without them (a frozen encoder that is not saved) are not compared.
        shared_prefix: The submodule both checkpoints must share.
        entry: For a released checkpoint, the entry to read (default: the role's first present).
        lora: For a released checkpoint, a LongLive adapter file to merge into the weights.
        lora_alpha: The adapters' ``lora_alpha`` (default: their rank).

    A submodule trained with LoRA (``stage.lora``) is loaded with its adapters merged into the
    weights (:func:`~sfpp.models.lora.merged_state_dict`), so ``module`` is a plain model.

    ``checkpoint`` may also be a student released by Self-Forcing, CausVid or LongLive (a torch
    file with ``generator`` / ``generator_ema`` / ``critic`` entries, see
    :mod:`sfpp.models.wan.released`): the generator's weights are read for a ``generator.``
    prefix, the critic's for a ``critic.`` one; ``entry`` picks another entry, and ``lora`` merges a
    LongLive adapter file (``lora_alpha``: its alpha, default its rank). ``entry`` and ``lora``
    apply to released files only.

    Raises:
        FileNotFoundError: If a checkpoint does not exist.
        ValueError: If nothing is stored under ``prefix`` (listing the prefixes that are), the
            keys or shapes do not match ``module``, or the shared weights differ.
    """
    payload = _payload(checkpoint, lightning_only=False)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        return _load_released(module, checkpoint, payload, prefix, entry, lora, lora_alpha)
    if entry is not None or lora is not None:
        raise ValueError(
            f"{checkpoint} is a Lightning checkpoint of sfpp: entry= and lora= apply to released "
            "checkpoints only (its weights are chosen by prefix=, and LoRA-trained stages merge their own)"
        )
    state = payload["state_dict"]
    if shared_with is not None:
        _check_shared(state, checkpoint, _state_dict(shared_with), shared_with, shared_prefix)
    selected = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not selected:
        available = sorted({key.split(".", 1)[0] + "." for key in state})
        raise ValueError(
            f"no weights under prefix {prefix!r} in {checkpoint}; top-level prefixes: {available}"
        )
    if any(".lora_" in key for key in selected):  # a LoRA-trained stage: fold the adapters in
        lora = (payload.get("hyper_parameters") or {}).get("lora")
        if not lora:
            raise ValueError(f"{checkpoint} holds LoRA adapters under {prefix!r} but no lora settings")
        selected = merged_state_dict(selected, LoraSettings(**dict(lora)).scaling)
    try:
        module.load_state_dict(selected, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"weights under {prefix!r} in {checkpoint} do not fit {type(module).__name__}: {error}"
        ) from error
    return module


def _load_released(
    module: nn.Module,
    checkpoint: str | Path,
    payload: object,
    prefix: str,
    entry: str | None,
    lora: str | Path | None,
    lora_alpha: float | None,
) -> nn.Module:
    """Load one network of a released (Self-Forcing / CausVid / LongLive) checkpoint into ``module``."""
    role = "critic" if prefix.startswith("critic.") else "student"
    try:
        state, chosen = read_released_state(
            checkpoint, role=role, entry=entry, lora=lora, lora_alpha=lora_alpha, payload=payload
        )
    except WanWeightsError as error:
        raise WanWeightsError(
            f"{checkpoint} is not a Lightning checkpoint (no 'state_dict' entry), nor a released one: {error}"
        ) from error
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"the {role} weights of {checkpoint} [{chosen or 'flat state dict'}] do not fit "
            f"{type(module).__name__}: {error}"
        ) from error
    return module


def _plain(value: Any) -> Any:
    """``value`` with containers and paths that ``torch.load(weights_only=True)`` refuses made plain."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return _plain(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def plain_hyperparameters(checkpoint: dict[str, Any]) -> None:
    """Make a Lightning checkpoint's hyperparameters plain, so that it loads with ``weights_only=True``.

    Hydra gives ``ListConfig`` / ``DictConfig`` values and data modules keep ``Path`` settings; a
    checkpoint holding them only loads with ``weights_only=False`` (``torch.load``'s default refuses
    them, and so does a sharded strategy's loader). Called from the stages' ``on_save_checkpoint``.
    """
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in checkpoint:
            checkpoint[key] = _plain(checkpoint[key])


def prime_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable parameter its optimiser state now, as its first step would.

    A sharded checkpoint (``torch.distributed.checkpoint``) needs state for every parameter; when a
    network has not stepped yet (the generator during the critic's warm-up), saving fills it in by
    one zero-gradient step, which counts as a step (AdamW's ``step`` becomes 1) and so changes the
    run's later updates, and a checkpoint saved with partial state does not load. Priming does that
    step once at the start of training with the learning rate at 0 and sets the step counts back to
    0: the state is then exactly what the first real step starts from (zero moments, zero steps), the
    weights are untouched, and saving changes nothing. An optimiser that has state (restored from a
    checkpoint) is left as it is, and so is one that keeps no state per parameter (plain SGD).
    Exact for Adam and AdamW (and SGD with momentum and no dampening): the primed state is what
    their first step would create.
    """
    if optimizer.state or not _keeps_state(optimizer):
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if not params or any(p.grad is not None for p in params):
        return
    for param in params:
        param.grad = torch.zeros_like(param)
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(0.0) if isinstance(group["lr"], torch.Tensor) else 0.0
    try:
        optimizer.step()
    finally:
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        optimizer.zero_grad(set_to_none=True)
    for state in optimizer.state.values():
        if "step" in state:
            step = state["step"]
            state["step"] = torch.zeros_like(step) if isinstance(step, torch.Tensor) else 0


def _keeps_state(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimiser keeps state per parameter (moments, momentum)."""
    defaults = optimizer.defaults
    return "betas" in defaults or bool(defaults.get("momentum", 0))
