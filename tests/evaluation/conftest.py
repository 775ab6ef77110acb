"""Fixtures for the evaluation tests: real checkpoints trained through the real data module.

Each checkpoint comes from two Lightning training steps on a few real HAM10000 images per class
(``limit_per_class``), with the data module's hyperparameters recorded by Lightning (split seed
7, not the default 42), so the evaluation must rebuild that split from the checkpoint alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest

from training.datamodule import LesionDataModule
from training.evaluation.config import EvaluationConfig
from training.evaluation.run import evaluate
from training.export.variants import export_variant
from training.module import LesionClassifier

SIZE = (48, 64)
SPLIT_SEED = 7


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # torch 2.14 marks TorchScript deprecated; Triton's PyTorch backend still needs it
    # (notes/triton-local.md), so the warning is expected here, not a defect.
    for item in items:
        if "tests/evaluation" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"))


def train_checkpoint(folder: Path, ham_dir: Path, seed: int) -> Path:
    """Two training steps of ``compact_cnn``; returns ``folder/checkpoints/best.ckpt``."""
    L.seed_everything(seed, verbose=False)
    dm = LesionDataModule(
        data_dir=str(ham_dir),
        image_size=SIZE,
        batch_size=16,
        num_workers=0,
        limit_per_class=4,
        seed=SPLIT_SEED,
    )
    model = LesionClassifier(model_name="compact_cnn", image_size=SIZE, warmup_epochs=0.0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny run: Lightning warns about workers and sizes
        trainer.fit(model, datamodule=dm)
    path = folder / "checkpoints" / "best.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def split_seed() -> int:
    return SPLIT_SEED


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, ham_dir: Path) -> list[Path]:
    """Two real checkpoints (different initialisations) on the same recorded split."""
    return [
        train_checkpoint(tmp_path_factory.mktemp(f"run{seed}"), ham_dir, seed) for seed in (0, 1)
    ]


@pytest.fixture(scope="session")
def ev(checkpoints: list[Path]):
    """The first checkpoint evaluated with TTA and a 2-member ensemble, 5 images per class."""
    config = EvaluationConfig(
        limit_per_class=5, n_resamples=100, tta=True, ensemble=[checkpoints[1]]
    )
    return evaluate(checkpoints[0], config)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory, ev, real_lesions_dir: Path) -> Path:
    """``ev``'s cnn, tta and ensemble exported as versions 1, 2 and 3; the model's folder."""
    repo = tmp_path_factory.mktemp("repo")
    for which in ("cnn", "tta", "ensemble"):
        export_variant(ev, which, repo, parity_images=real_lesions_dir, reference_images=50)
    return repo / "skin_lesion"
