"""``python -m training {fit,validate,test,predict}``: a LightningCLI over YAML files in configs/.

    python -m training fit --config configs/default.yaml
    python -m training fit --config configs/default.yaml --trainer.max_epochs 2 --model.lr 3e-4
    python -m training test -c configs/default.yaml --ckpt_path runs/default/checkpoints/best.ckpt
    python -m training fit --help

What the CLI adds to Lightning's:
- ``model.image_size`` is linked to ``data.image_size``: the model's size is the one truth (it
  is saved in the checkpoint and exported); the data module resizes to it. Evaluating a
  checkpoint therefore reads its size back from the checkpoint (``--ckpt_path``).
- Checkpointing and early stopping follow ``val/balanced_accuracy`` (mode max). Checkpoints go
  to ``<trainer.default_root_dir>/checkpoints/`` (``runs/<name>/``), with the resolved config
  and ``summary.json``.
- ``fit`` ends by testing the best checkpoint (the summary table shows both); set
  ``trainer.limit_test_batches: 0`` to skip that.
- ``predict`` writes ``<trainer.default_root_dir>/predictions.csv`` (the test split's images).
- W&B runs offline unless ``WANDB_MODE=online`` is set or the config says
  ``trainer.logger.init_args.mode: online`` (any ``wandb.init`` argument can be set there).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from training.callbacks import (
    Checkpoint,
    EpochLog,
    PredictionWriter,
    RunSummary,
    WandbExtras,
    wandb_logger,
)
from training.datamodule import LesionDataModule
from training.module import LesionClassifier

MONITOR = "val/balanced_accuracy"
EPILOG = (
    "More commands (see training/__main__.py): `python -m training {export,evaluate,search} "
    "--help`. W&B runs offline unless WANDB_MODE=online."
)


def _checkpoint_dir(default_root_dir: str | None) -> str:
    return str(Path(default_root_dir or ".") / "checkpoints")


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``<default_root_dir>/config_<stage>.yaml`` and into W&B.

    Lightning's default writes to ``trainer.log_dir``, which for a W&B logger is the folder
    the run was started from; the run's own folder keeps runs apart.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = Path(trainer.default_root_dir) / f"config_{getattr(stage, 'value', stage)}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), overwrite=True)
        logger = wandb_logger(trainer)
        if logger is not None:
            config = json.loads(self.parser.dump(self.config, format="json"))
            logger.experiment.config.update({"cli": config}, allow_val_change=True)


class LesionCLI(LightningCLI):
    """LightningCLI with the project's callbacks, links and fit-then-test."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.image_size", "data.image_size", apply_on="parse")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,  # a rerun replaces best.ckpt
                "checkpoint.auto_insert_metric_name": False,  # "/" in a name makes folders
            }
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", _checkpoint_dir)
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": MONITOR,
                "early_stopping.mode": "max",
                "early_stopping.patience": 5,
            }
        )
        parser.add_lightning_class_args(WandbExtras, "wandb_extras")

    def after_fit(self) -> None:
        if not self.trainer.limit_test_batches:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or None
        # verbose=False: RunSummary prints the table that matters, not 30 lines of scalars.
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)


def main(args: list[str] | None = None) -> LesionCLI:
    """Run the CLI on ``args`` (default ``sys.argv[1:]``); returns it for tests to inspect."""
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        cli = LesionCLI(
            LesionClassifier,
            LesionDataModule,
            args=args,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the module's AdamW + warm-up/cosine schedule
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={
                "default_root_dir": "runs/default",
                "callbacks": [RunSummary(), EpochLog(), PredictionWriter()],
            },
            parser_kwargs={"epilog": EPILOG},
        )
    except BaseException:
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)
    return cli


def _finish_wandb(exit_code: int) -> None:
    # A run left open would be reused by the next CLI in this process (tests, search trials).
    wandb: Any = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
