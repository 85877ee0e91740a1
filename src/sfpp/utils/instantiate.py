"""Building the named-component dicts of the config (``callbacks``, ``logger``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig


def instantiate_named(group: DictConfig | Mapping[str, Any] | None, group_name: str) -> list[Any]:
    """Instantiate every entry of a dict of named components, in config order.

    Entries set to ``null`` are skipped: that is how an experiment removes a component of a
    default group (``callbacks.rich_progress_bar: null``). Any other entry must be a config with
    a ``_target_``.

    Args:
        group: A mapping ``name -> component config``, or ``None`` for no components.
        group_name: The config group, used in error messages (``"callbacks"``, ``"logger"``).

    Returns:
        The instantiated components.

    Raises:
        TypeError: if the group is not a mapping or an entry is neither ``null`` nor a config
            with a ``_target_``.
    """
    if group is None:
        return []
    if not isinstance(group, (DictConfig, Mapping)):
        raise TypeError(f"`{group_name}` must be a dict of named components, got {type(group).__name__}.")
    components = []
    for name, component_cfg in group.items():
        if component_cfg is None:
            continue
        if not isinstance(component_cfg, (DictConfig, Mapping)) or "_target_" not in component_cfg:
            raise TypeError(
                f"`{group_name}.{name}` has no `_target_`; every entry of `{group_name}` must name the "
                f"class to build (or be null to drop it)."
            )
        components.append(hydra.utils.instantiate(component_cfg))
    return components


def instantiate_callbacks(callbacks_cfg: DictConfig | Mapping[str, Any] | None) -> list[Any]:
    """Instantiate the ``callbacks`` dict of the config (see :func:`instantiate_named`)."""
    return instantiate_named(callbacks_cfg, "callbacks")


def instantiate_loggers(logger_cfg: DictConfig | Mapping[str, Any] | None) -> list[Any]:
    """Instantiate the ``logger`` dict of the config (see :func:`instantiate_named`)."""
    return instantiate_named(logger_cfg, "logger")
