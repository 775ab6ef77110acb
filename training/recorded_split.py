"""The train/val/test split a checkpoint was trained with, rebuilt from what it recorded.

The data module's hyperparameters (seed, fractions, split kind, data folder) travel inside the
checkpoint; rebuilding the split with them on the same data gives the same rows. Both the
evaluation (validation for thresholds and temperature) and export (the drift reference of
``training.reference_stats``) read the split this way.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from contracts.errors import DataError
from training.datamodule import LesionDataModule

log = logging.getLogger(__name__)
# The settings a report shows of how the split was made.
SHOWN = ("data_dir", "csv_path", "split", "seed", "val_fraction", "test_fraction")


def datamodule_hparams(ckpt_path: Path | str | None) -> dict[str, Any]:
    """The data module's hyperparameters recorded in a checkpoint ({} when none)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return {}
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return dict(ckpt.get("datamodule_hyper_parameters") or {})


@dataclass
class SplitData:
    """The recorded split rebuilt: ``splits`` (train/val/test), and how it was made."""

    splits: dict[str, pd.DataFrame]
    dataset_version: str
    synthetic: bool
    source: str
    settings: dict[str, Any]


def rebuild_split(
    recorded: dict[str, Any],
    input_size: tuple[int, int],
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> SplitData:
    """The train/val/test split the model was trained with.

    Args:
        recorded: the data module's hyperparameters recorded in the checkpoint
            (:func:`datamodule_hparams`); the defaults of the rebuilt split.
        input_size: the model's ``(height, width)``.
        data_dir: the data folder (default: the recorded one if it exists, else HAM10000_DIR).
        overrides: data-module arguments to use instead (``seed``, ``val_fraction``, ...).

    Raises:
        DataError: the model was trained on a CSV that is missing here.
    """
    accepted = inspect.signature(LesionDataModule.__init__).parameters
    settings = {k: v for k, v in recorded.items() if k in accepted}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recorded_dir = settings.get("data_dir")
    if data_dir:
        settings["data_dir"] = data_dir
    elif recorded_dir and not Path(recorded_dir).is_dir():
        log.warning("recorded data_dir %s is missing here: using HAM10000_DIR", recorded_dir)
        settings["data_dir"] = None
    if settings.get("csv_path") and not Path(settings["csv_path"]).is_file():
        raise DataError(
            f"the model was trained on {settings['csv_path']}, which is missing here: pass "
            "--data-dir (or restore the CSV) to rebuild its split"
        )
    settings.update(image_size=input_size, cache_eval=False, num_workers=0)
    if not recorded:
        log.warning("no recorded data-module settings: splitting with the defaults/overrides")
    dm = LesionDataModule(**settings)
    dm.prepare_data()
    dm.setup("test")
    shown = {k: v for k, v in settings.items() if k in SHOWN}
    shown["data_dir"] = dm.source
    return SplitData(dm.splits, dm.dataset_version, dm.synthetic, dm.source, shown)
