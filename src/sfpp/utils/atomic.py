"""Files written whole or not at all: a job killed while writing leaves the previous file intact.

:func:`atomic_save` writes to a temporary file beside the target, flushes it to disk and renames it
over the target (``os.replace`` is atomic on POSIX and Windows within one file system).
:class:`AtomicCheckpointIO` makes Lightning's checkpoints (``last.ckpt`` and the others) do the
same: ``trainer.plugins`` of ``conf/trainer/default.yaml``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_save"]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file and a rename.

    Args:
        obj: Anything ``torch.save`` takes.
        path: The target; its folder is created if needed.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes (:func:`atomic_save`)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` whole or not at all.

        Raises:
            TypeError: If ``storage_options`` is given (local files take none).
        """
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}"
            )
        atomic_save(checkpoint, path)
