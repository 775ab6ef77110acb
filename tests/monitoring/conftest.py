"""Fixtures of tests/monitoring (defined in fixtures.py, shared with tests/web)."""

from tests.monitoring.fixtures import (  # noqa: F401 - fixtures, registered by import
    ham_datamodule,
    ham_split,
    monitored,
    monitored_repository,
    smoke_ckpt,
)
