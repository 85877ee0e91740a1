"""Locating the Hydra config directory (``conf/``) of an editable checkout."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR_ENV = "SFPP_CONFIG_DIR"
"""Environment variable that points the entry points at another config directory."""


def find_config_dir() -> Path:
    """Return the absolute path of the Hydra config directory.

    ``$SFPP_CONFIG_DIR`` wins when set; otherwise the ``conf/`` directory of the repository the
    package is installed from (editable install, ``src/`` layout) is used.

    Returns:
        The config directory, resolved to an absolute path.

    Raises:
        FileNotFoundError: if ``$SFPP_CONFIG_DIR`` is set but is not a directory, or if it is
            unset and the repository's ``conf/`` directory does not exist (e.g. a non-editable
            install).
    """
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        path = Path(override).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{CONFIG_DIR_ENV}={override!r} is not a directory; point it at sfpp's conf/."
            )
        return path
    # src/sfpp/utils/config_dir.py -> parents[3] is the repository root.
    path = Path(__file__).resolve().parents[3] / "conf"
    if not path.is_dir():
        raise FileNotFoundError(
            f"sfpp's Hydra config directory was not found at {path}. Install sfpp editable from a "
            f"checkout (`pip install -e .`) or set {CONFIG_DIR_ENV} to the checkout's conf/ directory."
        )
    return path


def list_group_options(group: str, config_dir: Path | None = None) -> list[str]:
    """Names of the configs of one group, e.g. ``["dmd", "ode_init"]`` for ``"stage"``.

    Args:
        group: The config group, a sub-directory of the config directory.
        config_dir: The config directory; found with :func:`find_config_dir` when omitted.

    Returns:
        The sorted file stems of the group's ``*.yaml`` files (empty if there are none).
    """
    root = config_dir if config_dir is not None else find_config_dir()
    return sorted(path.stem for path in (root / group).glob("*.yaml"))
