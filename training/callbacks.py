"""Callbacks around the LightningModule: the run summary (table + ``summary.json``), the W&B
extras (dataset version, confusion matrix, per-class table, misclassified images), the
prediction writer (``predictions.csv``) and the exponential moving average of the weights
(:class:`WeightEMA`, switched on from a config).

Both read what :class:`training.module.LesionClassifier` keeps in ``results[stage]`` after an
evaluation epoch; they run on the global-zero process only where they write or log.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from contracts.labels import CLASSES, MELANOMA
from contracts.metrics import per_class_rows
from training.module import StageResult


def wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's W&B logger, if it has one."""
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def wandb_run_dir(trainer: L.Trainer) -> str | None:
    """The local folder of the W&B run (what ``wandb sync`` takes), on global zero."""
    logger = wandb_logger(trainer)
    if logger is None or not trainer.is_global_zero:
        return None
    files_dir = getattr(logger.experiment, "dir", None)  # a disabled run has none
    return str(Path(files_dir).parent) if files_dir else None


def _fmt(value: float) -> str:
    return "  -  " if value is None or math.isnan(value) else f"{value:.3f}"


def format_table(title: str, result: StageResult) -> str:
    """The per-class table and headline figures of one stage, as printed at the end."""
    rows = per_class_rows(result.confusion, CLASSES)
    cols = ("sensitivity", "specificity", "precision", "f1")
    lines = [title, f"{'class':<8}" + "".join(f"{c:>13}" for c in cols) + f"{'support':>9}"]
    for row in rows:
        cells = "".join(f"{_fmt(row[c]):>13}" for c in cols)
        lines.append(f"{row['class']:<8}{cells}{row['support']:>9}")
    m = result.metrics
    lines.append(
        f"balanced accuracy {_fmt(m['balanced_accuracy'])}   accuracy {_fmt(m['accuracy'])}   "
        f"AUROC (macro, one-vs-rest) {_fmt(m['auroc_macro'])}"
    )
    lines.append(
        f"melanoma at argmax: sensitivity {_fmt(m[f'sensitivity_{MELANOMA}'])}   "
        f"specificity {_fmt(m[f'specificity_{MELANOMA}'])}"
    )
    return "\n".join(lines)


def _stage_summary(result: StageResult) -> dict[str, Any]:
    return {
        "metrics": result.metrics,
        "per_class": per_class_rows(result.confusion, CLASSES),
        "confusion_matrix": result.confusion.tolist(),
    }


class EpochLog(L.Callback):
    """One line per epoch on stdout, for runs that go on for hours in the background.

    ``epoch 3/10  train/loss 0.812  val/loss 0.903  val/balanced_accuracy 0.642
    val/sensitivity_mel 0.551  38 img/s  epoch 3m02s  ETA 21m14s``: training images per second
    over the epoch's training part, the epoch's wall time with validation, and the time the
    remaining epochs take at that pace.
    """

    def __init__(self) -> None:
        self.epoch_start = 0.0
        self.train_seconds = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.monotonic()
        self.images, self.train_seconds = 0, 0.0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
    ) -> None:
        self.images += len(batch["label"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.train_seconds = time.monotonic() - self.epoch_start

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After validation: the epoch's training loss and validation figures are both logged.
        if not self.images:
            return
        elapsed = time.monotonic() - self.epoch_start
        done, total = trainer.current_epoch + 1, trainer.max_epochs or 0
        logged = trainer.callback_metrics
        figures = "  ".join(
            f"{k} {float(logged[k]):.3f}"
            for k in (
                "train/loss_epoch",
                "val/loss",
                "val/balanced_accuracy",
                "val/sensitivity_mel",
            )
            if k in logged
        )
        rate = self.images / max(self.train_seconds or elapsed, 1e-9)  # no validation: all
        eta = f"  ETA {_duration(elapsed * (total - done))}" if total > done else ""
        print(
            f"epoch {done}/{total or '?'}  {figures}  {rate:.0f} img/s  "
            f"epoch {_duration(elapsed)}{eta}",
            flush=True,
        )


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with ``save_last: true`` meaning every epoch.

    Lightning 2.6 writes ``last.ckpt`` only at an epoch end that also wrote a top-k
    checkpoint, so with ``save_top_k: 1`` it is the *best* epoch, and ``--ckpt_path last``
    would repeat every epoch since (measured: a 2-epoch fit whose second epoch was no better
    left ``last.ckpt`` at epoch 0). Here it is written at every epoch end.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: L.Trainer) -> None:
        # Skipped where this step already saved (the top-k checkpoint, and last with it).
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class WeightEMA(EMAWeightAveraging):
    """An exponential moving average of the weights and batch-norm statistics, updated after
    every optimizer step: ``average = d * average + (1 - d) * weights`` with ``d = min(decay,
    (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``ExponentialMovingAverage(
    num_updates=...)`` rule: early on the average follows the weights, whose first epochs, far
    from the final ones, would otherwise weigh on it for thousands of steps; later it is a long
    average); the first update copies the weights.

    Validation, ``best.ckpt``/``last.ckpt`` (their ``state_dict``), the test after fit, and so
    evaluation and export all use the average; the raw weights travel in the checkpoint's
    ``current_model_state`` so that ``--ckpt_path last`` resumes both. Switched on in a config::

        trainer:
          callbacks:
            - class_path: training.callbacks.WeightEMA
              init_args: {decay: 0.997}

    At ~100 steps an epoch the decay reaches 0.99 (an average over about the last epoch)
    after 10 epochs; ``decay`` caps it.

    Lightning's callback restores the *raw* weights whenever it loads a checkpoint, the test
    that follows fit included, so the fit's own test table would describe weights that no
    checkpoint holds. Here the raw weights are restored only when a fit resumes.
    """

    def __init__(self, decay: float = 0.997) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")

        def average(averaged: torch.Tensor, current: torch.Tensor, updates: Any) -> torch.Tensor:
            # Tensor arithmetic on the parameter's device: no host sync per parameter on a GPU.
            n = torch.as_tensor(updates, dtype=torch.float32, device=averaged.device)
            d = ((1.0 + n) / (10.0 + n)).clamp(max=decay)
            return averaged * d + current * (1.0 - d)

        # EMAWeightAveraging's own avg_fn (a fixed decay) is replaced by the warmed-up one.
        super().__init__(decay=decay)
        self._kwargs["avg_fn"] = average

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Otherwise state_dict, already loaded, is the average: keep it.


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class RunSummary(L.Callback):
    """Prints a results table after fit and test and writes ``<default_root_dir>/summary.json``.

    After fit the table shows the best validation epoch by ``val/balanced_accuracy`` (the one
    ModelCheckpoint keeps); after test, the test set. The JSON file keeps both, with the best
    checkpoint, the W&B run folder, the dataset version and the model's hyperparameters.

    Args:
        filename: name of the JSON file inside the trainer's ``default_root_dir``.
    """

    def __init__(self, filename: str = "summary.json") -> None:
        self.filename = filename
        self.best: tuple[int, StageResult] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.best = None
        if trainer.is_global_zero:  # a new fit replaces the folder's previous results
            (Path(trainer.default_root_dir) / self.filename).unlink(missing_ok=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        result = getattr(pl_module, "results", {}).get("val")
        if trainer.sanity_checking or result is None:
            return
        score = result.metrics["balanced_accuracy"]
        # Strictly better, as ModelCheckpoint(mode="max") decides: ties keep the earlier epoch.
        if self.best is None or score > self.best[1].metrics["balanced_accuracy"]:
            self.best = (trainer.current_epoch, result)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best is not None:
            epoch, result = self.best
            self._report(trainer, pl_module, "val", result, {"epoch": epoch}, f"best epoch {epoch}")

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        result = getattr(pl_module, "results", {}).get("test")
        if result is not None:
            # The checkpoint's data version is the training data's; record what was tested too.
            data = getattr(getattr(trainer, "datamodule", None), "dataset_version", None)
            extra = {"checkpoint": trainer.ckpt_path, "data_version": data}
            self._report(trainer, pl_module, "test", result, extra, "")

    def _report(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str,
        result: StageResult,
        extra: dict[str, Any],
        note: str,
    ) -> None:
        path = Path(trainer.default_root_dir) / self.filename
        summary = json.loads(path.read_text()) if path.is_file() else {}
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        summary.update(
            {
                stage: {**extra, **_stage_summary(result)},
                "best_checkpoint": best or summary.get("best_checkpoint"),
                "wandb_run_dir": wandb_run_dir(trainer) or summary.get("wandb_run_dir"),
                "dataset_version": getattr(pl_module, "dataset_version", None),
                "synthetic": getattr(pl_module, "synthetic", None),
                "hyperparameters": dict(pl_module.hparams),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # NaN (an undefined ratio) is not JSON: write null.
        path.write_text(json.dumps(_nan_to_none(summary), indent=2, default=str) + "\n")
        data = "synthetic" if summary["synthetic"] else "real"
        title = "Validation" if stage == "val" else "Test"
        title += f", {note}" if note else ""
        title += f" ({data} data, version {str(summary['dataset_version'])[:16]})"
        print("\n" + format_table(title, result))
        print(f"best checkpoint: {summary['best_checkpoint']}")
        if summary["wandb_run_dir"]:
            print(f"W&B run: {summary['wandb_run_dir']} (offline: `wandb sync <that folder>`)")
        print(f"summary: {path}\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


class WandbExtras(L.Callback):
    """Logs to W&B what scalar metrics cannot show, after each validation and test epoch.

    ``<stage>/confusion_matrix`` (W&B's confusion-matrix plot), ``<stage>/per_class`` (a table:
    class, sensitivity, specificity, precision, f1, support) and ``<stage>/misclassified``
    (images as the model saw them, captioned with image id, true and predicted class). Also puts
    the dataset version and the synthetic flag into the run's config and tags. Does nothing
    without a ``WandbLogger``.

    Args:
        max_images: misclassified images logged per evaluation epoch (0 disables them).
    """

    def __init__(self, max_images: int = 16) -> None:
        self.max_images = max_images
        self.samples: list[Any] = []  # (image, index, true, predicted, p)
        self._reset()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._describe_data(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._describe_data(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def _reset(self) -> None:
        self.samples, self.seen = [], 0
        self.rng = np.random.default_rng(0)  # the same sample for the same predictions

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect(trainer, outputs, batch)

    # Test batches are sampled exactly as validation batches.
    on_test_batch_end = on_validation_batch_end

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_stage(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "test")

    def _describe_data(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        synthetic = bool(getattr(pl_module, "synthetic", False))
        run = logger.experiment
        run.config.update(
            {
                "dataset_version": getattr(pl_module, "dataset_version", None),
                "synthetic": synthetic,
            },
            allow_val_change=True,
        )
        tag = "synthetic" if synthetic else "real-data"
        if tag not in (run.tags or ()):
            run.tags = (*(run.tags or ()), tag)

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or wandb_logger(trainer) is None:
            return
        if not self.max_images or not isinstance(outputs, dict):
            return
        probs = outputs["probs"].detach().float().cpu()
        labels = batch["label"].cpu()
        pred = probs.argmax(dim=1)
        # Reservoir sampling: a uniform sample of the epoch's mistakes, not the first batch's
        # (splits are ordered, so the first mistakes would all share one class).
        for i in torch.nonzero(pred != labels).flatten().tolist():
            self.seen += 1
            if len(self.samples) < self.max_images:
                slot = len(self.samples)
                self.samples.append(None)
            else:
                slot = int(self.rng.integers(self.seen))
                if slot >= self.max_images:
                    continue
            image = batch["image"][i].cpu().numpy()
            p = float(probs[i, pred[i]])
            self.samples[slot] = (image, int(batch["index"][i]), int(labels[i]), int(pred[i]), p)

    @rank_zero_only
    def _log_stage(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import wandb  # only when a W&B logger exists

        logger = wandb_logger(trainer)
        result = getattr(pl_module, "results", {}).get(stage)
        if logger is None or result is None:
            return
        cm = result.confusion
        # W&B's plot takes label lists; rebuild them from the (process-synced) counts.
        true_idx, pred_idx = np.nonzero(cm)
        counts = cm[true_idx, pred_idx]
        rows = per_class_rows(cm, CLASSES)
        columns = ["class", "sensitivity", "specificity", "precision", "f1", "support"]
        logged: dict[str, Any] = {
            f"{stage}/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=np.repeat(true_idx, counts).tolist(),
                preds=np.repeat(pred_idx, counts).tolist(),
                class_names=list(CLASSES),
                title=f"{stage} confusion matrix",
            ),
            f"{stage}/per_class": wandb.Table(
                columns=columns, data=[[_nan_to_none(r[c]) for c in columns] for r in rows]
            ),
        }
        if self.samples:
            split = _split(trainer, stage)
            logged[f"{stage}/misclassified"] = [
                wandb.Image(image, caption=_caption(split, index, true, pred, p))
                for image, index, true, pred, p in self.samples
            ]
        logger.log_metrics(logged, step=trainer.global_step)


def _split(trainer: L.Trainer, stage: str) -> Any:
    splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
    return splits.get(stage)


def _caption(split: Any, index: int, true: int, pred: int, p: float) -> str:
    # The batch "index" is the row position in the datamodule's split frame.
    image_id = split.iloc[index]["image_id"] if split is not None else f"#{index}"
    return f"{image_id}: true {CLASSES[true]}, predicted {CLASSES[pred]} (p={p:.2f})"


class PredictionWriter(BasePredictionWriter):
    """Writes ``python -m training predict`` results to ``<default_root_dir>/predictions.csv``.

    One row per image of the data module's prediction split (its test split): ``image_id``,
    ``label`` (the truth), ``predicted`` and one ``p_<class>`` column per class. Under DDP each
    process writes its share to ``predictions-rank<N>.csv``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        if not predictions:
            return
        probs = torch.cat([p["probs"] for p in predictions]).float().cpu().numpy()
        index = torch.cat([p["index"] for p in predictions]).cpu().numpy()
        split = _split(trainer, "test")
        frame = pd.DataFrame(
            {
                "image_id": split["image_id"].to_numpy()[index] if split is not None else index,
                "label": split["label"].to_numpy()[index] if split is not None else None,
                "predicted": np.asarray(CLASSES)[probs.argmax(axis=1)],
                **{f"p_{c}": probs[:, k] for k, c in enumerate(CLASSES)},
            }
        )
        name = (
            "predictions.csv"
            if trainer.world_size == 1
            else f"predictions-rank{trainer.global_rank}.csv"
        )
        path = Path(trainer.default_root_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        print(f"predictions: {path} ({len(frame)} images)")
