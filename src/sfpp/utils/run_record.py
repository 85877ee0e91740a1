"""What a checkpoint folder belongs to: ``run.json`` beside the checkpoints, checked by ``ckpt_path=last``.

``ckpt_path=last`` resumes whatever ``last.ckpt`` the checkpoint folder holds. A folder shared by
several runs (the built-in world's experiments keep theirs in ``checkpoints/<task_name>`` so the
next stage finds them; a sweep whose jobs write to one folder) would then resume another run's
checkpoint silently. :func:`write_run_record` writes the settings that make a run what it is (its
stage, model, data, text encoder, codec, seed and task name, resolved) to ``run.json`` in the
checkpoint folder when training starts; :func:`check_resume` refuses ``ckpt_path=last`` when that
file says the folder's checkpoints come from other settings, naming the settings that differ.
An explicit ``ckpt_path=<file>`` is never checked: resuming another run's checkpoint on purpose
(a continuation with other settings) stays possible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "RECORD_NAME",
    "REMOVED_OPTIONS",
    "RUN_KEYS",
    "ResumeMismatchError",
    "check_resume",
    "run_settings",
    "write_run_record",
]

#: The file written beside the checkpoints.
RECORD_NAME = "run.json"
#: The top-level config nodes that make a run what it is (the trainer, callbacks and loggers may change
#: between a run and its resumption: a longer ``max_steps``, another checkpoint interval).
RUN_KEYS = ("task_name", "seed", "stage", "model", "data", "text", "codec")


class ResumeMismatchError(ValueError):
    """``ckpt_path=last`` found the checkpoint of a run with other settings."""


def _resolved(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:  # an interpolation only a Hydra run can resolve: compare it as written
            return OmegaConf.to_container(node, resolve=False)
    return node


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings of :data:`RUN_KEYS` in ``cfg``, resolved to plain values."""
    return {key: _resolved(cfg.get(key)) for key in RUN_KEYS}


def checkpoint_dir(cfg: DictConfig) -> Path | None:
    """The model checkpoint callback's folder, or ``None`` without one."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if not callback or not callback.get("dirpath"):
        return None
    return Path(str(callback.dirpath))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain settings trees."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new), key=str)
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


#: Options a run's settings held once and no longer do (dotted keys): a record of an earlier run
#: that has them still resumes (an ablation window sampler and one-object image batches).
REMOVED_OPTIONS = ("stage.window_beta", "data.image_max_objects")


def _in_current_layout(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """``recorded`` settings as the current configs lay them out.

    The student stages' shared settings moved from ``stage.<key>`` into ``stage.student.<key>``;
    the options of :data:`REMOVED_OPTIONS` are dropped.
    """
    settings = json.loads(json.dumps(recorded))  # a deep copy of plain values
    for dotted in REMOVED_OPTIONS:
        node, _, key = dotted.rpartition(".")
        if isinstance(settings.get(node), dict):
            settings[node].pop(key, None)
    stage, now = settings.get("stage"), current.get("stage")
    moved = isinstance(stage, dict) and "student" not in stage
    if moved and isinstance(now, Mapping) and isinstance(now.get("student"), Mapping):
        stage["student"] = {key: stage.pop(key) for key in list(now["student"]) if key in stage}
    return settings


def check_resume(cfg: DictConfig) -> None:
    """Refuse ``ckpt_path=last`` when the checkpoint folder's ``run.json`` records other settings.

    Raises:
        ResumeMismatchError: Naming the folder, the settings that differ (at most eight) and the
            ways out.
    """
    if str(cfg.get("ckpt_path")) != "last":
        return
    folder = checkpoint_dir(cfg)
    record = None if folder is None else folder / RECORD_NAME
    if record is None or not record.is_file():
        return
    recorded = json.loads(record.read_text())
    current = run_settings(cfg)
    differing = _differences(_in_current_layout(recorded.get("settings", {}), current), current)
    if not differing:
        return
    shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
    raise ResumeMismatchError(
        f"ckpt_path=last: the checkpoints in {folder} belong to a run with other settings ({shown} differ; "
        f"{record} has that run's); resume it with its settings, give this run its own folder "
        "(callbacks.model_checkpoint.dirpath=...), start afresh with ckpt_path=null, or name the "
        "checkpoint file in ckpt_path to resume it anyway"
    )


def write_run_record(cfg: DictConfig) -> Path | None:
    """Write ``run.json`` (the settings and the command's overrides) into the checkpoint folder.

    Returns:
        The file written, or ``None`` without a checkpoint folder.
    """
    folder = checkpoint_dir(cfg)
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD_NAME
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra run
        pass
    content = {"overrides": overrides, "settings": run_settings(cfg)}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1, default=str) + "\n")
    temporary.replace(path)
    return path
