"""Training entry point: ``python -m sfpp.train [overrides]``.

Composes ``conf/train.yaml``, instantiates the datamodule, the stage (a LightningModule), the
callbacks, the loggers and the Trainer, then calls ``Trainer.fit``. Nothing else happens here:
what a run does is decided by the config, e.g.::

    python -m sfpp.train --cfg job                       # print the composed config
    python -m sfpp.train experiment=<name>
    python -m sfpp.train stage=<name> model=toy trainer=cpu ckpt_path=<last.ckpt>
"""

from __future__ import annotations

import hydra
import lightning
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from sfpp.utils.cli import quiet_known_warnings, take_debug_flag, user_errors
from sfpp.utils.config_dir import find_config_dir, list_group_options
from sfpp.utils.instantiate import instantiate_callbacks, instantiate_loggers
from sfpp.utils.resolvers import register_resolvers
from sfpp.utils.run_record import check_resume, write_run_record

register_resolvers()  # ${sfpp_precision:...} and ${sfpp_gpus_per_node:...} in the configs


class MissingStageError(ValueError):
    """Raised when the composed config selects no training stage."""


def train(cfg: DictConfig) -> float | None:
    """Fit the configured stage.

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The value of ``cfg.optimized_metric`` at the end of training (what an optimiser-driven
        sweep minimises or maximises), or ``None`` when no metric is named.

    Raises:
        MissingStageError: if ``cfg.stage`` is unset.
        ResumeMismatchError: if ``ckpt_path=last`` would resume the checkpoint of a run with other
            settings (:mod:`sfpp.utils.run_record`).
        KeyError: if ``optimized_metric`` names a metric the run never logged.
    """
    lightning.seed_everything(cfg.seed, workers=True)

    if cfg.get("stage") is None:
        stages = list_group_options("stage")
        available = ", ".join(stages) if stages else f"none yet in {find_config_dir() / 'stage'}"
        raise MissingStageError(
            "No training stage selected: pass `stage=<name>` or an `experiment=<name>` that sets one "
            f"(available stages: {available})."
        )

    check_resume(cfg)
    datamodule = hydra.utils.instantiate(cfg.data) if cfg.get("data") is not None else None
    module = hydra.utils.instantiate(cfg.stage)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    if rank_zero_only.rank == 0:
        write_run_record(cfg)  # what ckpt_path=last checks when this folder is resumed
    if cfg.get("validate_before_fit"):  # the starting model's validation numbers, logged at step 0
        trainer.validate(module, datamodule=datamodule)
    # The checkpoints are the runs' own: their hyperparameters hold OmegaConf containers, which
    # torch's weights-only unpickler refuses, so resuming loads them in full.
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)

    metric = cfg.get("optimized_metric")
    if metric is None:
        return None
    if metric not in trainer.callback_metrics:
        raise KeyError(
            f"optimized_metric={metric!r} was not logged; logged metrics: {sorted(trainer.callback_metrics)}"
        )
    return float(trainer.callback_metrics[metric])


def main() -> None:
    """Parse the command line with Hydra and run :func:`train`."""
    quiet_known_warnings()
    take_debug_flag()
    hydra_main = hydra.main(version_base="1.3", config_path=str(find_config_dir()), config_name="train")
    hydra_main(user_errors(train))()


if __name__ == "__main__":
    main()
