"""Fixtures for tests/reliability: real photos as bytes, and the gateway as its own process
(``python -m serving``), for what only a process shows: its logs and its memory. The
in-process gateway, Triton and PostgreSQL come from tests/fixtures_serving.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load_soak import start_gateway_process
from serving.security import hash_key
from serving.triton.ports import free_port
from tests.fixtures_serving import API_KEY, ROOT


@pytest.fixture(scope="session")
def photos(real_lesions_dir: Path, lesion_rows: list[dict]) -> list[bytes]:
    """The real full-size lesion photos (JPEG, about 250 KB each)."""
    return [(real_lesions_dir / f"{r['image_id']}.jpg").read_bytes() for r in lesion_rows]


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Any]:
    """``start(triton_url, **SKIN_settings) -> (url, log_path)``: ``python -m serving`` with
    the test key, a SQLite file in ``tmp_path``, logs to a file; stopped after the test."""
    started = []

    def start(triton_url: str, **settings: str) -> tuple[str, Path]:
        env = {
            "SKIN_PORT": str(free_port()),
            "SKIN_TRITON_URL": triton_url,
            "SKIN_DATABASE_URL": f"sqlite:///{tmp_path / 'process.db'}",
            "SKIN_API_KEY_HASHES": hash_key(API_KEY),
            "SKIN_RULES_PATH": str(ROOT / "configs" / "body_location_rules.yaml"),
            "SKIN_IMAGE_DIR": str(tmp_path / "images"),
            **{f"SKIN_{k.upper()}": v for k, v in settings.items()},
        }
        log = tmp_path / "gateway.log"
        proc, url = start_gateway_process(env, tmp_path, log)
        started.append(proc)
        return url, log

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(30)
