"""The built-in world's teacher, trained by the project's own pipeline and shipped with the package.

``make demo`` starts from it instead of training the teacher (the longest stage: 34 minutes on a
2-core CPU without native bf16, 14 with); ``make demo-full`` trains everything from scratch. The file is the
teacher stage's Lightning checkpoint without the optimiser's state and the raw (non-averaged)
weights: what the later stages read from it, the EMA weights (``ema.module.``) and the world's text
encoder (``text_encoder.``). ``toy_teacher.json`` beside it records where it comes from (commit,
command, machine, minutes) and its :mod:`sfpp.world.report` scores, with the file's SHA-256.

``python -m sfpp.world.pretrained <path>`` checks the file's hash and copies it to ``path`` (the
teacher stage of ``make demo``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TEACHER_CHECKPOINT",
    "TEACHER_PROVENANCE",
    "install_teacher",
    "provenance",
    "slim_checkpoint",
    "sha256",
]

_HERE = Path(__file__).parent
#: The shipped teacher checkpoint.
TEACHER_CHECKPOINT = _HERE / "toy_teacher.ckpt"
#: Its provenance and scores.
TEACHER_PROVENANCE = _HERE / "toy_teacher.json"
#: The weights the later stages read from a teacher checkpoint.
KEPT_PREFIXES = ("ema.module.", "text_encoder.")


def sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance() -> dict[str, Any]:
    """The shipped teacher's provenance record."""
    return json.loads(TEACHER_PROVENANCE.read_text())


def slim_checkpoint(source: Path, target: Path) -> Path:
    """Write ``source``'s teacher checkpoint without what later stages never read.

    Keeps the ``state_dict`` entries under :data:`KEPT_PREFIXES`, the hyper-parameters and the step;
    drops the optimiser and scheduler states, the raw weights and the callbacks' state.

    Raises:
        ValueError: If ``source`` holds no EMA weights or no text encoder.
    """
    payload = torch.load(source, map_location="cpu", weights_only=False)
    state = {k: v for k, v in payload["state_dict"].items() if k.startswith(KEPT_PREFIXES)}
    for prefix in KEPT_PREFIXES:
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(f"{source} holds no {prefix!r} weights: not a teacher stage checkpoint")
    slim = {
        "state_dict": state,
        "hyper_parameters": payload.get("hyper_parameters", {}),
        "global_step": payload.get("global_step"),
        "pytorch-lightning_version": payload.get("pytorch-lightning_version"),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, target)
    return target


def install_teacher(target: Path) -> Path:
    """Copy the shipped teacher to ``target`` after checking its hash against its provenance.

    Raises:
        FileNotFoundError: If the package lacks the file.
        ValueError: If the file's hash is not the recorded one (a damaged or replaced file).
    """
    if not TEACHER_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the shipped teacher {TEACHER_CHECKPOINT} is missing; `make demo-full` trains one"
        )
    recorded = provenance()["sha256"]
    actual = sha256(TEACHER_CHECKPOINT)
    if actual != recorded:
        raise ValueError(
            f"{TEACHER_CHECKPOINT} has SHA-256 {actual}, its provenance records {recorded}; "
            "reinstall the package, or train the teacher with `make demo-full`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    shutil.copyfile(TEACHER_CHECKPOINT, temporary)
    temporary.replace(target)
    return target
