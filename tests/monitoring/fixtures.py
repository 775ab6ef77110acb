"""Monitoring fixtures: the real training split, the served model's reference statistics, and
gateways (real Triton from tests/fixtures_serving.py) that see them. Imported by the
conftest.py of tests/monitoring and tests/web."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.labels import CLASS_INDEX
from tests.factories import smoke_checkpoint
from tests.fixtures_serving import MODEL_SIZE
from training.export import quiet_torchscript
from training.reference_stats import compute_reference

REFERENCE_IMAGES = 400


@pytest.fixture(scope="session")
def ham_datamodule(ham_dir: Path) -> Any:
    """HAM10000 in a LesionDataModule with its defaults, set up (lesion-grouped split)."""
    from training.datamodule import LesionDataModule

    dm = LesionDataModule(
        data_dir=str(ham_dir), image_size=MODEL_SIZE, num_workers=0, cache_eval=False
    )
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def ham_split(ham_datamodule: Any) -> dict[str, pd.DataFrame]:
    """The train/val/test split of ``ham_datamodule``."""
    return ham_datamodule.splits


@pytest.fixture(scope="session")
def monitored_repository(
    model_repository: Path, ham_datamodule: Any, tmp_path_factory: Any
) -> Path:
    """What the gateway reads of the served version: its metadata.json plus the reference
    that export stores, computed by training.reference_stats from the SERVED model.pt on the
    real training split. (Triton keeps serving ``model_repository``; only the metadata the
    gateway reads lives here.)"""
    source = model_repository / "skin_lesion" / "1"
    with quiet_torchscript():
        model = torch.jit.load(str(source / "model.pt")).eval()
    splits = ham_datamodule.splits
    reference = compute_reference(
        splits["train"], splits["val"], model, MODEL_SIZE, max_images=REFERENCE_IMAGES
    )
    target = tmp_path_factory.mktemp("monitored_repository") / "skin_lesion" / "1"
    target.mkdir(parents=True)
    meta = json.loads((source / "metadata.json").read_text())
    meta["reference"] = {**reference, "dataset_version": ham_datamodule.dataset_version}
    (target / "metadata.json").write_text(json.dumps(meta))
    shutil.copy(model_repository / "skin_lesion" / "config.pbtxt", target.parent)
    return target.parent.parent


@pytest.fixture
def monitored(make_gateway: Any, triton: Any, monitored_repository: Path, tmp_path: Path):
    """``monitored(**settings)``: a fresh gateway (own SQLite file) that monitors drift against
    the served version's reference; the background refresh is off (reports on request)."""

    def make(**overrides: Any) -> Any:
        overrides.setdefault("drift_refresh_s", 0)
        # Hundreds of uploads a second from one key: the rate limit (tests/reliability tests
        # it) would only slow these tests down. 0 = no limit.
        overrides.setdefault("rate_limit_per_s", 0)
        db = f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"
        return make_gateway(db, triton.grpc_url, model_repository=monitored_repository, **overrides)

    return make


@pytest.fixture(scope="session")
def smoke_ckpt(tmp_path_factory: Any, real_lesions_dir: Path) -> Path:
    """A real LesionClassifier checkpoint at the served size (two Lightning steps on one real
    photo of each class); it records no data module, as a checkpoint not made by fit."""
    from contracts.images import eval_resize, read_image

    table = pd.read_csv(real_lesions_dir / "labels.csv").iloc[::4]
    images = np.stack(
        [
            eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), MODEL_SIZE)
            for i in table.image_id
        ]
    )
    path = tmp_path_factory.mktemp("ckpt") / "smoke.ckpt"
    return smoke_checkpoint(path, images, [CLASS_INDEX[d] for d in table.dx])
