"""When a dependency fails: Triton down, model not loaded, database down, a bug in a route."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from serving.app import create_app
from serving.inference import predict_with_retries
from serving.settings import Settings
from serving.triton.client import AsyncTritonClassifier, TritonModelNotReady, TritonUnavailable
from tests.fixtures_serving import assert_problem

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes


@pytest.fixture(scope="module")
def jpeg(real_lesions_dir: Path, lesion_rows: list[dict]) -> bytes:
    return (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()


def upload(live: Any, data: bytes) -> httpx.Response:
    with live.client() as c:
        return c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", data, "image/jpeg")},
        )


def test_triton_down_gives_503_with_retry_after(
    make_gateway: Any, tmp_path: Path, jpeg: bytes
) -> None:
    live = make_gateway(
        f"sqlite:///{tmp_path / 'down.db'}", closed_port_url(), triton_timeout_s=2.0
    )
    with live.client() as c:
        assert c.get("/healthz").status_code == 200
        # The replica stays in the load balancer: it answers, with 503 + Retry-After.
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "not ready" in ready.json()["checks"]["triton"]
        assert ready.json()["checks"]["database"] == "ready"
        whole = c.get("/readyz", params={"strict": "true"})  # the whole service: not ready
        assert whole.status_code == 503 and whole.headers["retry-after"] == "5"
        assert whole.json()["status"] == "not ready"
        models = c.get("/v1/models")
        assert_problem(models, "model-server-unavailable", 503)
        assert "retry later" in models.json()["detail"]
        start = time.monotonic()
        r = upload(live, jpeg)
        assert time.monotonic() - start < 5  # bounded by the deadline, retries included
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        problem = assert_problem(r, "model-server-unavailable", 503)
        assert problem["detail"] == "the model server is unavailable: retry later"
        assert 'skin_triton_errors_total{kind="unavailable"}' in c.get("/metrics").text
    assert live.count() == 0


def test_model_not_loaded_gives_503(
    make_gateway: Any, triton: Any, tmp_path: Path, jpeg: bytes
) -> None:
    live = make_gateway(f"sqlite:///{tmp_path / 'nm.db'}", triton.grpc_url, model_name="absent")
    with live.client() as c:
        assert c.get("/readyz").json()["status"] == "degraded"
        assert c.get("/readyz?strict=true").status_code == 503
        r = upload(live, jpeg)
        assert_problem(r, "model-not-loaded", 503)
        assert "not loaded" in r.json()["detail"]
        assert 'skin_triton_errors_total{kind="model_not_ready"}' in c.get("/metrics").text
    assert live.count() == 0


@pytest.mark.postgres
def test_database_down_gives_503_then_recovers(
    make_gateway: Any, triton: Any, postgres_url: str, jpeg: bytes, model_repository: Path
) -> None:
    admin = create_engine(
        postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS skin_outage"))
        conn.execute(text("CREATE DATABASE skin_outage"))
    live = make_gateway(
        postgres_url.rsplit("/", 1)[0] + "/skin_outage",
        triton.grpc_url,
        model_repository=model_repository,
    )
    assert upload(live, jpeg).status_code == 201
    with admin.connect() as conn:  # the outage: no new connections, existing ones cut
        conn.execute(text("ALTER DATABASE skin_outage ALLOW_CONNECTIONS false"))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'skin_outage' AND pid <> pg_backend_pid()"
            )
        )
    try:
        with live.client() as c:
            ready = c.get("/readyz?strict=true")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
            assert c.get("/readyz").json()["status"] == "degraded"  # the replica stays in
            r = upload(live, jpeg)
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert assert_problem(r, "database-unavailable", 503)["detail"] == (
                "the database is unavailable: retry later"
            )
            assert c.get("/v1/predictions/x").status_code == 503
    finally:
        with admin.connect() as conn:
            conn.execute(text("ALTER DATABASE skin_outage ALLOW_CONNECTIONS true"))
    with live.client() as c:
        assert c.get("/readyz?strict=true").status_code == 200
    assert upload(live, jpeg).status_code == 201
    assert live.count() == 2  # the refused upload left nothing behind
    admin.dispose()


def test_unhandled_error_is_opaque_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'x.db'}",
        triton_url=closed_port_url(),
        allow_no_auth=True,
        rules_path=Path(__file__).resolve().parents[2] / "configs/body_location_rules.yaml",
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = c.get("/boom", headers={"X-Request-ID": "trace-boom-1"})
    body = assert_problem(r, "internal-error", 500, "error_id")
    assert "secret" not in r.text and r.headers["x-request-id"] == "trace-boom-1"
    logged = [rec for rec in caplog.records if body["error_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info  # the traceback, in the log only


class CountingClient(AsyncTritonClassifier):
    """The real client, counting its calls."""

    calls = 0

    async def predict(self, batch: np.ndarray, version: int | None = None) -> np.ndarray:
        self.calls += 1
        return await super().predict(batch, version)


def test_retries_only_when_safe_and_within_the_deadline(triton: Any) -> None:
    batch = np.zeros((1, 112, 150, 3), np.uint8)

    async def run(url: str, model: str, deadline: float, retries: int) -> tuple[int, Exception]:
        client = CountingClient(url, model, timeout_s=deadline)
        try:
            await predict_with_retries(client, batch, 1, deadline, retries)
        except Exception as e:  # noqa: BLE001
            return client.calls, e
        finally:
            await client.close()
        raise AssertionError("expected a failure")

    start = time.monotonic()
    calls, error = asyncio.run(run(closed_port_url(), "skin_lesion", 3.0, 2))
    assert isinstance(error, TritonUnavailable) and calls == 3  # 1 + 2 retries
    assert time.monotonic() - start < 3.5
    calls, error = asyncio.run(run(triton.grpc_url, "absent", 3.0, 2))
    assert isinstance(error, TritonModelNotReady) and calls == 1  # never retried

    async def ok() -> np.ndarray:
        async with AsyncTritonClassifier(triton.grpc_url) as client:
            return await predict_with_retries(client, batch, 1, 5.0, 2)

    assert asyncio.run(ok()).shape == (1, 7)
