"""User errors of the command lines as one or two lines, without a traceback.

A bad path, an impossible length, an unknown word or a setting that cannot work raises a
``FileNotFoundError`` or a ``ValueError`` whose message names the setting to change (Hydra wraps
the ones raised while building a component in an ``InstantiationException``). :func:`user_errors`
turns those into ``error: <message>`` on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` keeps the
full traceback. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["USER_ERROR_EXIT", "user_errors"]

T = TypeVar("T")

#: Exit status of a command stopped by a user error.
USER_ERROR_EXIT = 2


def _user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (unwrapping Hydra's instantiation errors), or ``None``."""
    from hydra.errors import InstantiationException

    seen = 0
    while isinstance(error, InstantiationException) and error.__cause__ is not None and seen < 8:
        error, seen = error.__cause__, seen + 1
    if isinstance(error, FileNotFoundError | ValueError):
        return error
    return None


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
            print(f"error: {cause}", file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    return wrapped
