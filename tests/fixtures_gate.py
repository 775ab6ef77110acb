"""Gateway fixtures with the gate (a pytest plugin registered in tests/conftest.py): the
session's checkpoint exported WITH the out-of-distribution output and ``gate`` in its
metadata.json, both computed by the real export path on a split of real HAM10000 images (the
training data, as for a real version), served by its own real tritonserver.

The gate is fitted on HAM10000, not on the 28 full-size photos: the quality thresholds are
low/high percentiles of the training images, so fitting them on a dozen of the photos the
tests then upload would refuse the others for being a little darker or softer than those.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.metadata import METADATA_FILE, read_metadata
from serving.triton.server import run_triton
from tests.fixtures_serving import THRESHOLDS, LiveGateway, session_gateway

# The HAM10000 subset the gated export's split is rebuilt on (the data module's default
# fractions: 15 % of the lesions for validation): about 1,000 images, 18 s of export here.
GATE_LESIONS_PER_CLASS = 100
GATE_IMAGES = 300  # training images the quality thresholds and the Gaussians are fitted on


@pytest.fixture(scope="session")
def gated_repository(
    tmp_path_factory: pytest.TempPathFactory,
    served_checkpoint: Path,
    real_lesions_dir: Path,
    ham_dir: Path,
) -> Path:
    """``served_checkpoint`` exported with the gate as version 1 of its own repository, with
    the referral thresholds the session's version has."""
    from tests.factories import ham_layout
    from training.export import ExportOptions, export

    data = ham_layout(tmp_path_factory.mktemp("gate-data"), ham_dir, GATE_LESIONS_PER_CLASS)
    repo = tmp_path_factory.mktemp("gated_repository")
    options = ExportOptions(
        parity_images=real_lesions_dir,
        reference_data=data,
        gate_images=GATE_IMAGES,
        reference_images=200,
    )
    version = export(served_checkpoint, repo, options=options)
    metadata = read_metadata(version)
    assert metadata.has_ood_output and metadata.quality_thresholds() is not None
    metadata.thresholds = {t: {"threshold": v} for t, v in THRESHOLDS.items()}
    metadata.write(version / METADATA_FILE)
    return repo


@pytest.fixture(scope="session")
def gated_triton(gated_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real tritonserver serving ``gated_repository`` (both outputs)."""
    with run_triton(gated_repository, cache_dir=tmp_path_factory.mktemp("gated-triton")) as server:
        yield server


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])],
)
def gated_gateway(
    request: pytest.FixtureRequest,
    gated_triton: Any,
    gated_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveGateway]:
    """The gateway serving the gated version, on SQLite and on PostgreSQL."""
    yield from session_gateway(
        request, tmp_path_factory, "gated-gateway", gated_triton, gated_repository
    )


@pytest.fixture
def make_gated_gateway(make_gateway: Any, gated_triton: Any, gated_repository: Path) -> Any:
    """``make_gated_gateway(database_url, **settings)``: a gateway of its own on the gated
    version (its metadata.json read from ``gated_repository`` unless told otherwise)."""

    def make(database_url: str, **overrides: Any) -> LiveGateway:
        overrides.setdefault("model_repository", gated_repository)
        return make_gateway(database_url, gated_triton.grpc_url, **overrides)

    return make
