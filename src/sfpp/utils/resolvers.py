"""The OmegaConf resolvers of sfpp's configs, registered by every entry point before it composes one.

* ``${sfpp_precision:<preferred>,${trainer.accelerator}}``: the preferred precision where the device
  computes bf16 natively, else ``32-true`` (:func:`sfpp.utils.precision.fast_precision`).
* ``${sfpp_gpus_per_node:${trainer.accelerator},${trainer.devices}}``: the GPUs a SLURM job asks per
  node (:func:`gpus_per_node`): the trainer's devices on a GPU trainer, none on a CPU one, so that
  ``sbatch`` gets no GPU request it would refuse on a node without GPUs.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sfpp.utils.precision import RESOLVER as PRECISION_RESOLVER
from sfpp.utils.precision import fast_precision

__all__ = ["GPUS_RESOLVER", "gpus_per_node", "register_resolvers"]

#: The SLURM launcher's resolver name in configs.
GPUS_RESOLVER = "sfpp_gpus_per_node"


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node for ``hydra.launcher.gpus_per_node``: ``devices`` on ``gpu``/``cuda``, else ``None``.

    Args:
        accelerator: Lightning's ``trainer.accelerator``.
        devices: Lightning's ``trainer.devices`` (a count on a SLURM trainer).

    Raises:
        ValueError: For a GPU trainer whose ``devices`` is not a positive count (``auto`` cannot
            size a SLURM request).
    """
    if str(accelerator) not in ("gpu", "cuda"):
        return None  # a CPU (or auto) trainer: no GPU request; submitit then leaves --gpus-per-node out
    try:
        count = int(devices)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(
            f"trainer.devices={devices!r}: a SLURM job on a GPU trainer needs a GPU count per node (e.g. 8)"
        )
    return count


def register_resolvers() -> None:
    """Register every resolver (once; later calls do nothing)."""
    if not OmegaConf.has_resolver(PRECISION_RESOLVER):
        OmegaConf.register_new_resolver(PRECISION_RESOLVER, fast_precision)
    if not OmegaConf.has_resolver(GPUS_RESOLVER):
        OmegaConf.register_new_resolver(GPUS_RESOLVER, gpus_per_node)
