"""User errors of the command lines as one or two lines, without a traceback.

A bad path, an impossible length, an unknown word or a setting that cannot work raises a
``FileNotFoundError`` or a ``ValueError`` whose message names the setting to change (Hydra wraps
the ones raised while building a component in an ``InstantiationException``). :func:`user_errors`
turns those into ``error: <message>`` on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` (or
``--debug`` on the command line, see :func:`take_debug_flag`) keeps the full traceback. Inside a
submitit job (``SUBMITIT_EXECUTOR`` set, as on SLURM) the error is raised as it is, so that submitit
records it as the job's result instead of the job ending without one. A run stopped
by :class:`~sfpp.callbacks.guards.DivergenceError` ends the same way. Anything else (a bug) keeps
its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "ADVERTISEMENTS",
    "HARMLESS_WARNINGS",
    "USER_ERROR_EXIT",
    "quiet_known_warnings",
    "take_debug_flag",
    "user_errors",
]

T = TypeVar("T")

#: Exit status of a command stopped by a user error.
USER_ERROR_EXIT = 2


def _user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (unwrapping Hydra's instantiation errors), or ``None``."""
    from hydra.errors import InstantiationException

    from sfpp.callbacks.guards import DivergenceError

    seen = 0
    while isinstance(error, InstantiationException) and error.__cause__ is not None and seen < 8:
        error, seen = error.__cause__, seen + 1
    if isinstance(error, FileNotFoundError | ValueError | DivergenceError):
        return error
    return None


def take_debug_flag(argv: list[str] | None = None) -> bool:
    """Remove ``--debug`` from the command line (``sys.argv`` by default) and keep tracebacks if it was there.

    Hydra would refuse the flag, so the command lines call this before Hydra parses the arguments;
    it sets ``HYDRA_FULL_ERROR=1``, which :func:`user_errors` and Hydra both honour.

    Returns:
        Whether the flag was given.
    """
    argv = sys.argv if argv is None else argv
    if "--debug" not in argv:
        return False
    while "--debug" in argv:
        argv.remove("--debug")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    return True


def user_errors(task: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra task function so that user errors end the command with a short message."""

    @functools.wraps(task)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            cause = _user_error(error)
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if os.environ.get("SUBMITIT_EXECUTOR"):
                # A submitit job (SLURM): SystemExit would end it without a result file and leave the
                # submitter waiting; the error itself reaches the submitter as the job's result.
                raise
            print(f"error: {cause}", file=sys.stderr)
            print("(--debug or HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    return wrapped


#: Warnings every sfpp run prints that ask nothing of the user, as ``(message regex, why harmless)``.
HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        "the frozen parts of a stage (teacher, text encoder, EMA copy, critic's reference) are in "
        "eval mode on purpose",
    ),
    (
        r"Torchinductor does not support code generation for complex operators",
        "the RoPE rotation multiplies complex numbers; inductor runs that one operation eagerly",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning's own use of a torch pytree API; nothing in sfpp or the user's code calls it",
    ),
    (
        r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
        "the DMD and GRPO stages step their optimisers themselves; the checkpoint after the step is "
        "the one a resumed run needs",
    ),
    (
        r"Precision bf16-mixed is not supported by the model summary",
        "only the summary table's size in MB is estimated at 32 bits; training runs in bf16-mixed "
        "as configured",
    ),
)


#: Info lines of Lightning that are advertisements, not information about the run (prefixes).
ADVERTISEMENTS: tuple[str, ...] = ("💡 Tip: For seamless cloud logging",)


class _DropAdvertisements(logging.Filter):
    """Drop the log records that start with one of :data:`ADVERTISEMENTS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENTS)


def quiet_known_warnings() -> None:
    """Hide :data:`HARMLESS_WARNINGS` and Lightning's :data:`ADVERTISEMENTS` in this process.

    Every other warning and log line still shows.
    """
    for message, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdvertisements())
