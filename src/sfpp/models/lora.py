"""Low-rank adapters (LoRA, through peft) on the attention and feed-forward linears of a CausalWanDiT.

LongLive tunes long rollouts with LoRA on generator and critic: only the adapters train, so the
gradients and the optimiser states shrink to the adapters' size while the frozen base weights are
shared with nothing else to update. :func:`apply_lora` injects adapters (``peft``'s
``inject_adapter_in_model``, the `lora` extra) and freezes everything else; an adapted linear
computes ``W x + (alpha / rank) B A x`` with ``B = 0`` at the start, so the adapted model equals
the base model until it trains.

:func:`lora_state_dict` / :func:`save_adapter` / :func:`load_adapter` keep the adapters alone;
:func:`merged_state_dict` folds them into plain weights (``W + (alpha / rank) B A``), which is how
a LoRA-trained checkpoint loads into a plain model (:func:`sfpp.stages.checkpoints.load_submodule`
does it when it finds adapter keys).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "DEFAULT_TARGETS",
    "LoraSettings",
    "apply_lora",
    "count_parameters",
    "load_adapter",
    "lora_state_dict",
    "merged_state_dict",
    "save_adapter",
]

#: The attention (self and cross: q, k, v, o) and feed-forward linears of every block.
DEFAULT_TARGETS: tuple[str, ...] = ("q", "k", "v", "o", "ffn.0", "ffn.2")
_ADAPTER = "default"


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale and targets of the adapters.

    Args:
        rank: Rank ``r`` of ``B A`` (``>= 1``).
        alpha: Scale numerator: the update is ``(alpha / rank) B A``.
        target_modules: Names (or name suffixes) of the ``nn.Linear`` modules to adapt.
        dropout: Dropout on the adapters' input.

    Raises:
        ValueError: For ``rank < 1``, ``alpha <= 0``, no targets or a dropout outside ``[0, 1)``.
    """

    rank: int = 16
    alpha: float = 16.0
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("lora target_modules is empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    @classmethod
    def parse(cls, value: LoraSettings | Mapping | None) -> LoraSettings | None:
        """Settings from a config mapping (``stage.lora``), settings, or ``None`` (no LoRA)."""
        if value is None or isinstance(value, LoraSettings):
            return value
        return cls(**dict(value))

    def as_dict(self) -> dict:
        """Plain values, for hyperparameters and adapter files."""
        return {**asdict(self), "target_modules": list(self.target_modules)}


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject adapters into ``model`` in place, freeze every other parameter, and return it.

    Raises:
        ImportError: Without ``peft`` (``pip install -e '.[lora]'``).
        ValueError: If no module of ``model`` matches the targets.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("stage.lora needs peft: pip install -e '.[lora]'") from error
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.target_modules),
        lora_dropout=settings.dropout,
        bias="none",
    )
    try:
        inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    except ValueError as error:
        raise ValueError(
            f"lora target_modules {list(settings.target_modules)} match no module: {error}"
        ) from error
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (``...lora_A.default.weight``, ``...lora_B.default.weight``)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items() if ".lora_" in key}


def save_adapter(model: nn.Module, path: str | Path, settings: LoraSettings) -> Path:
    """Write the adapters of ``model`` as safetensors, with the settings in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in lora_state_dict(model).items()}
    if not state:
        raise ValueError("the model has no LoRA adapters to save")
    save_file(state, str(path), metadata={"lora": json.dumps(settings.as_dict())})
    return path


def load_adapter(model: nn.Module, path: str | Path) -> tuple[nn.Module, LoraSettings]:
    """Inject the adapters of ``path`` (written by :func:`save_adapter`) into a plain ``model``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file has no settings or its adapters do not fit ``model``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if "lora" not in metadata:
        raise ValueError(f"{path} has no LoRA settings in its metadata; write it with save_adapter")
    settings = LoraSettings(**json.loads(metadata["lora"]))
    apply_lora(model, settings)
    state = load_file(str(path))
    expected = set(lora_state_dict(model))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"{path} does not fit the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state, strict=False)
    return model, settings


def merged_state_dict(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A plain model's state dict from an adapted one: every ``W + scaling * B A``, adapter keys gone.

    Args:
        state: A state dict with ``<name>.base_layer.weight``, ``<name>.lora_A.default.weight`` and
            ``<name>.lora_B.default.weight`` entries (others are kept as they are).
        scaling: ``alpha / rank`` of the adapters.

    Raises:
        ValueError: If an adapted layer lacks one of its adapter matrices.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        layer, kind = key.split(".base_layer.")
        if kind == "weight":
            a_key, b_key = f"{layer}.lora_A.{_ADAPTER}.weight", f"{layer}.lora_B.{_ADAPTER}.weight"
            if a_key not in state or b_key not in state:
                raise ValueError(f"{layer} has a base layer but no adapter matrices {a_key}, {b_key}")
            a, b = state[a_key].float(), state[b_key].float()  # (r, in), (out, r)
            value = (value.float() + scaling * (b @ a)).to(value.dtype)  # (out, in)
        merged[f"{layer}.{kind}"] = value
    return merged


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
