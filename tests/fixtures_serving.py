"""Gateway fixtures shared by tests/serving and tests/reliability (a pytest plugin registered in
tests/conftest.py): a real exported model served by the real tritonserver, a real PostgreSQL
cluster, and the gateway itself on a free port (uvicorn in a thread)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, func, select, text

from serving.app import create_app
from serving.db.tables import Prediction
from serving.limits import server_options
from serving.security import hash_key
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL_SIZE = (112, 150)  # (height, width), HAM10000's 3:4
API_KEY = "test-key-" + "x" * 32
OTHER_KEY = "other-key-" + "y" * 32
# Referral thresholds the fixture writes into the served version's metadata.json, where the
# evaluation would write its chosen operating points.
THRESHOLDS = {"mel": 0.2, "malignant": 0.45}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lesion_rows(real_lesions_dir: Path) -> list[dict[str, str]]:
    with open(real_lesions_dir / "labels.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    """A real exported model (training.export.smoke_repository: a small CNN fitted for two
    steps on real photos, exported by the real export path). Not a useful classifier, a real
    one. Its metadata.json gets referral thresholds, as the evaluation would write them."""
    from tests.factories import smoke_repository

    repo = tmp_path_factory.mktemp("model_repository")
    meta_path = smoke_repository(repo, real_lesions_dir, size=MODEL_SIZE) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["thresholds"] = {t: {"threshold": v} for t, v in THRESHOLDS.items()}
    meta_path.write_text(json.dumps(meta, indent=2))
    return repo


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real tritonserver binary serving the exported model (CPU, Python backend)."""
    from serving.triton.server import run_triton

    with run_triton(model_repository, cache_dir=tmp_path_factory.mktemp("triton")) as server:
        yield server


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `apt-get install -y postgresql` (.ci/run does)")
    return found[-1].parent


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free port (run by the `postgres` user when root),
    with a database ``skin``; :meth:`stop` and :meth:`start` again for outage tests."""

    def __init__(self) -> None:
        self.bindir = _pg_bin()
        self.data = Path(tempfile.mkdtemp(prefix="skin-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.data, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/skin"
        self._run(
            "initdb", "-D", str(self.data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.start()
        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE skin"))
        admin.dispose()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        db, log = str(self.data / "db"), str(self.data / "log")
        self._run("pg_ctl", "-D", db, "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data / "db"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL cluster's database ``skin``."""
    cluster = PostgresCluster()
    yield cluster.url
    cluster.remove()


class LiveGateway:
    """The gateway under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            **server_options(settings),  # as `python -m serving` runs it
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.engine = create_engine(settings.database_url)

    def start(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.dispose()

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def count(self, table: type = Prediction) -> int:
        """Rows in a table, read straight from the database (not through the API)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()


def gateway_settings(database_url: str, triton_url: str, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "triton_url": triton_url,
        "database_url": database_url,
        "model_repository": None,
        "rules_path": ROOT / "configs" / "body_location_rules.yaml",
        "api_key_hashes": [hash_key(API_KEY), hash_key(OTHER_KEY)],
        "image_dir": tmp / "images",
        "triton_timeout_s": 10.0,
        # Tests send bursts from one key; the limiter has its own tests (tests/reliability).
        "rate_limit_per_s": 0.0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])],
)
def gateway(
    request: pytest.FixtureRequest,
    triton: Any,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveGateway]:
    """The gateway against the real Triton, on SQLite (WAL) and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp(f"gateway-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'predictions.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    settings = gateway_settings(url, triton.grpc_url, tmp, model_repository=model_repository)
    live = LiveGateway(settings).start()
    yield live
    live.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start extra gateways with their own settings (``make_gateway(db_url, triton_url, **kw)``);
    all are stopped after the test."""
    started: list[LiveGateway] = []

    def make(database_url: str, triton_url: str, **overrides: Any) -> LiveGateway:
        live = LiveGateway(gateway_settings(database_url, triton_url, tmp_path, **overrides))
        started.append(live.start())
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture(scope="session")
def keys() -> dict[str, str]:
    """Two valid API keys (their digests are configured) and the thresholds in metadata.json."""
    return {"main": API_KEY, "other": OTHER_KEY}


@pytest.fixture(scope="session")
def served_thresholds() -> dict[str, float]:
    return dict(THRESHOLDS)
