"""Gateway fixtures shared by tests/serving and tests/reliability (a pytest plugin registered in
tests/conftest.py): a real exported model served by the real tritonserver, a real PostgreSQL
cluster, and the gateway itself on a free port (uvicorn in a thread)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from sqlalchemy import create_engine, func, make_url, select, text

from contracts.images import eval_resize, index_images, read_image
from contracts.labels import NUM_CLASSES
from contracts.metadata import METADATA_FILE, read_metadata
from serving.app import create_app
from serving.db.tables import Prediction
from serving.limits import server_options
from serving.security import hash_key
from serving.settings import Settings
from serving.triton.ports import free_port
from serving.triton.server import run_triton

ROOT = Path(__file__).resolve().parents[1]
MODEL_SIZE = (112, 150)  # (height, width), HAM10000's 3:4
API_KEY = "test-key-" + "x" * 32
OTHER_KEY = "other-key-" + "y" * 32
# Referral thresholds the fixture writes into the served version's metadata.json, where the
# evaluation would write its chosen operating points.
THRESHOLDS = {"mel": 0.2, "malignant": 0.45}


@pytest.fixture(scope="session")
def lesion_rows(real_lesions_dir: Path) -> list[dict[str, str]]:
    with open(real_lesions_dir / "labels.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    """The checkpoint the session's Triton serves: a small CNN fitted by a real Lightning
    Trainer for two steps on the first eight real photos at ``MODEL_SIZE``. Not a useful
    classifier, a real one."""
    # Imported here: torch and Lightning load only for the tests that use a model.
    from tests.factories import smoke_checkpoint

    paths = sorted(index_images(real_lesions_dir).values())[:8]
    images = np.stack([eval_resize(read_image(p), MODEL_SIZE) for p in paths])
    labels = [i % NUM_CLASSES for i in range(len(paths))]
    path = tmp_path_factory.mktemp("served-checkpoint") / "smoke.ckpt"
    return smoke_checkpoint(path, images, labels)


@pytest.fixture(scope="session")
def model_repository(
    tmp_path_factory: pytest.TempPathFactory, served_checkpoint: Path, real_lesions_dir: Path
) -> Path:
    """``served_checkpoint`` exported by the real export path as version 1. Its metadata.json
    gets referral thresholds, as the evaluation would write them."""
    from training.export import ExportOptions, export

    repo = tmp_path_factory.mktemp("model_repository")
    version = export(served_checkpoint, repo, options=ExportOptions(parity_images=real_lesions_dir))
    metadata = read_metadata(version)
    metadata.thresholds = {t: {"threshold": v} for t, v in THRESHOLDS.items()}
    metadata.write(version / METADATA_FILE)
    return repo


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real tritonserver binary serving ``model_repository`` (CPU, Python backend): the one
    server of the session, shared by tests/serving, tests/triton, tests/reliability, ..."""
    with run_triton(model_repository, cache_dir=tmp_path_factory.mktemp("triton")) as server:
        yield server


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed: `apt-get install -y postgresql` "
            "(`make test` installs it as root)"
        )
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
    yield from session_gateway(request, tmp_path_factory, "gateway", triton, model_repository)


def session_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    triton: Any,
    repository: Path,
) -> Iterator[LiveGateway]:
    """A session gateway on ``request.param``'s database (``sqlite`` or ``postgres``) in front
    of ``triton``, reading ``repository``'s metadata; stopped when the session ends."""
    tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'predictions.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    settings = gateway_settings(url, triton.grpc_url, tmp, model_repository=repository)
    live = LiveGateway(settings).start()
    yield live
    live.stop()


@pytest.fixture
def make_gateway(tmp_path: Path, model_repository: Path) -> Iterator[Any]:
    """Start extra gateways with their own settings (``make_gateway(db_url, triton_url, **kw)``);
    all are stopped after the test. They read the session's model repository (each version's
    metadata.json gives its input size and thresholds) unless told otherwise."""
    started: list[LiveGateway] = []

    def make(database_url: str, triton_url: str, **overrides: Any) -> LiveGateway:
        overrides.setdefault("model_repository", model_repository)
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own: a SQLite file, or a new database in the
    session's PostgreSQL cluster (whose ``skin`` database other tests fill)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = make_url(request.getfixturevalue("postgres_url"))
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance"}


def assert_problem(r: Any, kind: str | None, status: int, *extra: str) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem of ``kind`` (None: about:blank) with exactly the standard
    members plus ``extra``, a readable detail, and the request id header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert set(body) == PROBLEM_MEMBERS | set(extra), body
    assert body["type"] == (f"/problems/{kind}" if kind else "about:blank"), body
    assert body["status"] == status and body["title"] and body["detail"], body
    assert body["instance"] == httpx.URL(str(r.request.url)).path, body
    assert r.headers.get("x-request-id"), r.headers
    return body
