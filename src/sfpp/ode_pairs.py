"""ODE-pair generation entry point: ``python -m sfpp.ode_pairs [overrides]``.

Composes ``conf/ode_pairs.yaml``, instantiates the :class:`~sfpp.data.ode_pairs.OdePairGenerator`
(teacher, text encoder, samplers, shapes, prompts) and writes the pairs to ``output_dir``. A rerun
with the same settings resumes where the previous one stopped; other settings are refused. E.g.::

    python -m sfpp.ode_pairs                                        # the built-in world (toy teacher)
    python -m sfpp.ode_pairs teacher_ckpt=<toy_teacher last.ckpt> generator.num_trajectories=256
    python -m sfpp.ode_pairs ode_pairs=wan_1_3b wan_dir=<Wan2.1-T2V-1.3B-Diffusers dir>
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sfpp.utils.cli import quiet_known_warnings, take_debug_flag, user_errors
from sfpp.utils.config_dir import find_config_dir
from sfpp.utils.resolvers import register_resolvers

__all__ = ["generate_ode_pairs", "main"]

register_resolvers()  # ${sfpp_gpus_per_node:...} when launched on SLURM

log = logging.getLogger(__name__)


def generate_ode_pairs(cfg: DictConfig) -> Path:
    """Generate (or complete) the ODE pairs of a composed ``ode_pairs`` config.

    Args:
        cfg: The composed config: ``generator`` (an ``OdePairGenerator`` node) and ``output_dir``.

    Returns:
        The path of the written ``index.json``.
    """
    generator = hydra.utils.instantiate(cfg.generator)
    index = generator.run(cfg.output_dir)
    log.info("ODE pairs: %d trajectories in %s", generator.num_trajectories, index.parent)
    return index


def main() -> None:
    """Parse the command line with Hydra and run :func:`generate_ode_pairs`."""
    quiet_known_warnings()
    take_debug_flag()
    hydra_main = hydra.main(version_base="1.3", config_path=str(find_config_dir()), config_name="ode_pairs")
    hydra_main(user_errors(generate_ode_pairs))()


if __name__ == "__main__":
    main()
