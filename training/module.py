"""The training system: a registered network, class-weighted loss, AdamW with warm-up and cosine
decay, and the lesion metrics per stage (``val/balanced_accuracy``, ``test/sensitivity_mel``).

Batches come from :class:`training.datamodule.LesionDataModule` as
``{"image": uint8 [N, H, W, 3], "label": int64 [N], "index": int64 [N], "clinical": float32
[N, D]}``; scaling and normalisation happen inside ``self.model`` (an ``ImageClassifier``, or a
``FusionClassifier`` that also reads ``clinical``), which is what gets exported.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

import models
from contracts.clinical import describe as describe_clinical
from contracts.errors import ConfigError
from contracts.labels import CLASSES, NUM_CLASSES
from models.fusion import FusionClassifier
from models.registry import freeze_input_stages
from models.wrappers import ImageClassifier
from training.metrics import LesionMetrics

Batch = dict[str, torch.Tensor]
PROGRESS_BAR = ("balanced_accuracy", "sensitivity_mel")


@dataclass
class StageResult:
    """The metrics of the last completed epoch of an evaluation stage."""

    metrics: dict[str, float]
    confusion: np.ndarray


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LesionClassifier(L.LightningModule):
    """Classifies dermoscopic images into the 7 HAM10000 classes.

    Class weights come from the data (``datamodule.class_weights``, set in :meth:`setup` when
    fitting) and are kept in a buffer, so a checkpoint carries them with the dataset's version.

    Args:
        model_name: a network from the ``models`` registry (``compact_cnn``,
            ``efficientnet_lite0``, ``resnet18``, ...).
        dropout: dropout rate before the classifier, in [0, 1).
        pretrained: start from the ImageNet weights shipped with the project (models that have
            them, e.g. ``efficientnet_lite0``).
        weights_path: a state-dict file to start from instead of ``pretrained``.
        lr: peak learning rate of AdamW, reached after the warm-up.
        weight_decay: AdamW weight decay, applied to weight matrices and kernels only (not to
            biases and normalisation parameters).
        warmup_epochs: epochs of linear learning-rate warm-up (fractions allowed) before the
            cosine decay to zero at the last step.
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        image_size: ``(height, width)`` of the training images; the data module resizes to it
            (linked by the CLI) and export records it.
        channels_last: keep convolution weights in channels-last memory format (faster
            convolutions on CPU oneDNN and GPU tensor cores; batches already arrive NHWC).
        frozen_stages: how many stages from the input stay as loaded (the stem counts as one;
            :func:`models.registry.freeze_input_stages`): no gradients, batch-norm statistics
            fixed. 0 trains everything.
        clinical: fuse the patient's age, sex and body site with the image
            (``models.fusion.FusionClassifier``): the network takes the batch's ``clinical``
            encoding (``contracts.clinical``) as its second input, and the export takes it as
            ``clinical__1``. The data module masks fields at random while training
            (``data.clinical_dropout``).
    """

    def __init__(  # noqa: PLR0913 (LightningCLI's typed config: each parameter is a model.* key)
        self,
        model_name: str = "compact_cnn",
        dropout: float = 0.3,
        pretrained: bool = False,
        weights_path: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
        image_size: tuple[int, int] = (112, 150),
        channels_last: bool = True,
        frozen_stages: int = 0,
        clinical: bool = False,
    ) -> None:
        super().__init__()
        _check_arguments(lr, weight_decay, warmup_epochs, label_smoothing, image_size)
        self.save_hyperparameters()
        spec = models.get_spec(model_name)  # ConfigError for an unknown name
        # A fusion model's dropout acts once, on the fused features (models.fusion).
        net_dropout = 0.0 if clinical else dropout
        net = models.create(model_name, NUM_CLASSES, net_dropout, pretrained, weights_path)
        # A plain list: the modules stay registered where they are, this only remembers them.
        self._frozen = freeze_input_stages(net, frozen_stages)
        if clinical:
            try:
                self.model: nn.Module = FusionClassifier(
                    net, spec.mean, spec.std, NUM_CLASSES, dropout
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            self.model = ImageClassifier(net, spec.mean, spec.std)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("class_weights", torch.ones(NUM_CLASSES))
        self.dataset_version: str | None = None
        self.synthetic: bool | None = None
        self.train_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.stage_metrics = nn.ModuleDict({s: LesionMetrics(CLASSES) for s in ("val", "test")})
        self.results: dict[str, StageResult] = {}

    def train(self, mode: bool = True) -> LesionClassifier:
        """As ``nn.Module.train``, but the frozen stages stay in eval mode (fixed statistics)."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def on_fit_start(self) -> None:
        if self._frozen:  # they are in eval mode on purpose: Lightning's warning says otherwise
            warnings.filterwarnings(
                "ignore", r"Found \d+ module\(s\) in eval mode", PossibleUserWarning
            )

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, 7]`` of ``uint8 [N, H, W, 3]`` RGB images (inference); ``clinical``:
        their ``contracts.clinical`` encoding, for a fusion model (None: every field unknown;
        an image-only model ignores it)."""
        return self.model(images, clinical)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, logits = self._shared_step(batch, "train")
        self.train_accuracy(logits, batch["label"])
        self.log("train/accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch["image"], batch.get("clinical")).float().softmax(dim=1)
        return {"probs": probs, "index": batch["index"]}

    def configure_optimizers(self) -> dict[str, Any]:
        # Decay weight matrices and kernels only: decaying biases and norm scales only hurts.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in params if p.ndim > 1],
                "weight_decay": self.hparams.weight_decay,
            },
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "set trainer.max_epochs or trainer.max_steps: the schedule needs an end"
            )
        if not math.isfinite(self.trainer.num_training_batches):
            # With max_steps alone Lightning has not sized the train loader yet: do it now.
            self.trainer.fit_loop.setup_data()
        per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        warmup = min(int(total), round(self.hparams.warmup_epochs * per_epoch))
        schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=int(total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        size = tuple(datamodule.image_size)
        if size != tuple(self.hparams.image_size):
            raise ConfigError(
                f"the data module resizes images to {size} but the model was built for "
                f"{tuple(self.hparams.image_size)}: set model.image_size (the CLI passes it to the "
                "data module) or build both with the same image_size"
            )
        if stage == "fit":
            self.class_weights.copy_(torch.as_tensor(datamodule.class_weights, dtype=torch.float32))
        # A checkpoint's own version wins (on_load_checkpoint runs after setup).
        if self.dataset_version is None or stage == "fit":
            self.dataset_version = datamodule.dataset_version
            self.synthetic = bool(datamodule.synthetic)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain types, so export can describe the model without importing Lightning or the data.
        checkpoint["classes"] = list(CLASSES)
        checkpoint["dataset_version"] = self.dataset_version
        checkpoint["synthetic"] = self.synthetic
        checkpoint["class_weights"] = self.class_weights.tolist()
        # The encoding a fusion model was trained on: export refuses another (contracts.clinical).
        checkpoint["clinical"] = describe_clinical() if self.hparams.get("clinical") else None
        wandb = next((lg for lg in self.loggers if isinstance(lg, WandbLogger)), None)
        checkpoint["wandb_run_id"] = wandb.version if wandb is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.dataset_version = checkpoint.get("dataset_version")
        self.synthetic = checkpoint.get("synthetic")

    def _shared_step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["image"], batch.get("clinical"))
        loss = F.cross_entropy(
            logits.float(),
            batch["label"],
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
        )
        train = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=train,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not train,
            batch_size=len(logits),
        )
        return loss, logits

    def _eval_step(self, batch: Batch, stage: str) -> dict[str, torch.Tensor]:
        _, logits = self._shared_step(batch, stage)
        probs = logits.float().softmax(dim=1)
        self.stage_metrics[stage].update(probs, batch["label"])
        return {"probs": probs}

    def _log_epoch(self, stage: str) -> None:
        metric = self.stage_metrics[stage]
        values, confusion = metric.compute()  # states already summed over all processes
        metric.reset()
        self.results[stage] = StageResult(values, confusion)
        # The values are identical on every process; sync_dist averages equal numbers (cheap)
        # and keeps Lightning from warning about unsynced epoch-level logs under DDP.
        shown = {f"{stage}/{k}": v for k, v in values.items() if k in PROGRESS_BAR}
        self.log_dict(shown, prog_bar=True, sync_dist=True)
        rest = {f"{stage}/{k}": v for k, v in values.items() if k not in PROGRESS_BAR}
        self.log_dict(rest, sync_dist=True)


def _check_arguments(
    lr: float,
    weight_decay: float,
    warmup_epochs: float,
    label_smoothing: float,
    image_size: tuple[int, int],
) -> None:
    problems = []
    if not lr > 0:
        problems.append(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        problems.append(f"weight_decay must be >= 0, got {weight_decay}")
    if warmup_epochs < 0:
        problems.append(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if not 0 <= label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if len(image_size) != 2 or min(image_size) < 16:
        problems.append(f"image_size must be (height, width), each >= 16, got {image_size}")
    if problems:
        raise ConfigError("; ".join(problems))
