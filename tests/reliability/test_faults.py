"""Faults under load, each with nothing lost: every prediction answered 201 has its record.

Triton killed and restarted on its ports, PostgreSQL stopped and started, SQLite locked, a
feedback sent again and again at once, a model version promoted while uploads run. The load
is ``benchmarks.load_soak.LoadLoop`` (real photos, real HTTP, concurrent workers).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from benchmarks.load_soak import LoadLoop, LoadResult
from contracts.repository import promote
from serving.db.tables import Feedback, FeedbackEvent, Prediction
from serving.triton.server import TritonServer
from tests.fixtures_serving import API_KEY, MODEL_SIZE, PostgresCluster

pytestmark = [pytest.mark.triton, pytest.mark.slow]
DEADLINE_S = 3.0  # the gateway's Triton deadline in these tests


@pytest.fixture(scope="module")
def own_triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Triton of this module's own, on a copy of the repository: killed and given a new
    version here without disturbing the session's server."""
    repo = tmp_path_factory.mktemp("own") / "repo"
    shutil.copytree(model_repository, repo)
    server = TritonServer(repo, cache_dir=tmp_path_factory.mktemp("own-triton")).start()
    yield server
    server.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition``; the seconds it took. Fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - start


def stored_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        ids = set(conn.scalars(select(Prediction.id)))
    engine.dispose()
    return ids


def assert_nothing_lost(result: LoadResult, database_url: str, probes: list[str]) -> None:
    """Every 201 has its record, and no record exists without its 201 (no half-writes);
    ``probes``: the ids of 201s the test itself got outside the load."""
    answered = set(result.ids)
    assert len(answered) == result.statuses[201] > 0
    assert stored_ids(database_url) == answered | set(probes)


def probe(live: Any, photo: bytes, ids: list[str]) -> dict | None:
    """One upload outside the load: its answer when 201 (its id kept in ``ids``), else None."""
    with live.client() as c:
        r = c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", photo, "image/jpeg")},
        )
    if r.status_code != 201:
        return None
    ids.append(r.json()["id"])
    return r.json()


def kill_hard(server: TritonServer) -> None:
    """SIGKILL to the server's process group, as when its container dies: the Python-backend
    stubs die with it. Its shared-memory regions, which it can no longer remove, are removed."""
    assert server.process is not None
    regions = set(Path("/dev/shm").glob(f"skin{os.getpid()}_{server.ports['grpc']}_*"))
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.process = None
    for region in regions:
        region.unlink(missing_ok=True)


def test_triton_killed_during_load(
    own_triton: TritonServer, make_gateway: Any, photos: list[bytes], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    live = make_gateway(
        url,
        own_triton.grpc_url,
        triton_timeout_s=DEADLINE_S,
        model_repository=own_triton.repository,
    )
    loop = LoadLoop(live.url, API_KEY, photos, concurrency=8, timeout_s=30).start()
    wait_until(lambda: loop.result.statuses[201] >= 20, 60, "20 predictions before the fault")
    kill_hard(own_triton)
    wait_until(lambda: loop.result.statuses[503] >= 10, 30, "503 answers while Triton is down")
    with live.client() as c:  # the replica stays in; the whole service is not ready
        assert c.get("/readyz").json()["status"] == "degraded"
        assert c.get("/readyz?strict=true").status_code == 503
    own_triton.start()  # the same ports: the gateway is not told anything
    probes: list[str] = []
    recovery = wait_until(lambda: probe(live, photos[0], probes), 120, "recovery after restart")
    time.sleep(2)
    result = loop.stop()
    assert set(result.statuses) <= {201, 503}, (result.statuses, result.failures[:5])
    assert max(result.latencies) < DEADLINE_S + 5  # a 503 within the deadline, never a hang
    with live.client() as c:
        assert c.get("/readyz?strict=true").status_code == 200
    assert_nothing_lost(result, url, probes)
    print(f"triton kill: {dict(result.statuses)}, recovered {recovery:.1f} s after restart")


def test_postgres_stopped_and_started_during_load(
    make_gateway: Any, triton: Any, photos: list[bytes]
) -> None:
    cluster = PostgresCluster()
    try:
        live = make_gateway(cluster.url, triton.grpc_url)
        loop = LoadLoop(live.url, API_KEY, photos, concurrency=4, timeout_s=30).start()
        wait_until(lambda: loop.result.statuses[201] >= 10, 60, "10 predictions before the fault")
        cluster.stop()
        wait_until(lambda: loop.result.statuses[503] >= 10, 30, "503 while the database is down")
        with live.client() as c:
            assert c.get("/readyz").json()["checks"]["database"] == "unavailable"
            refused = c.post(
                "/v1/predictions/x/feedback", json={"diagnosis": "mel", "confirmation": "histo"}
            )
            assert refused.status_code == 503 and refused.headers["retry-after"]
        cluster.start()
        n = loop.result.statuses[201]
        wait_until(lambda: loop.result.statuses[201] >= n + 10, 60, "recovery")
        result = loop.stop()
        assert set(result.statuses) <= {201, 503}, (result.statuses, result.failures[:5])
        assert_nothing_lost(result, cluster.url, [])
        print(f"postgres stop/start: {dict(result.statuses)}")
    finally:
        cluster.remove()


def test_sqlite_locked_during_load(
    make_gateway: Any, triton: Any, photos: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "locked.db"
    live = make_gateway(f"sqlite:///{path}", triton.grpc_url)
    loop = LoadLoop(live.url, API_KEY, photos, concurrency=4, timeout_s=30).start()
    wait_until(lambda: loop.result.statuses[201] >= 10, 60, "10 predictions before the fault")
    lock = sqlite3.connect(path, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the file: the gateway waits 5 s
    wait_until(lambda: loop.result.statuses[503] >= 4, 30, "503 while the file is locked")
    lock.rollback()
    lock.close()
    n = loop.result.statuses[201]
    wait_until(lambda: loop.result.statuses[201] >= n + 10, 60, "recovery")
    result = loop.stop()
    assert set(result.statuses) <= {201, 503}, (result.statuses, result.failures[:5])
    assert_nothing_lost(result, f"sqlite:///{path}", [])
    print(f"sqlite locked: {dict(result.statuses)}, slowest {max(result.latencies):.1f} s")


def test_feedback_sent_again_and_again_makes_one_record(gateway: Any, photos: list) -> None:
    with gateway.client() as c:
        pid = c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", photos[3], "image/jpeg")},
        ).json()["id"]

    def send(diagnosis: str) -> int:
        with httpx.Client(base_url=gateway.url, headers={"X-API-Key": API_KEY}, timeout=30) as c:
            return c.post(
                f"/v1/predictions/{pid}/feedback",
                json={"diagnosis": diagnosis, "confirmation": "histo"},
            ).status_code

    rounds = ["mel", "bcc", "nv", "mel"]  # each sent 8 times at once, as a retrying client
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for diagnosis in rounds:
            statuses = sorted(pool.map(send, [diagnosis] * 8))
            assert statuses == [200] * 7 + [201], (diagnosis, statuses)

    def count(table: type, where: Any) -> int:
        with gateway.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()

    assert count(Feedback, Feedback.prediction_id == pid) == 1
    assert count(FeedbackEvent, FeedbackEvent.prediction_id == pid) == len(rounds)
    with gateway.client() as c:
        history = c.get(f"/v1/predictions/{pid}").json()["feedback_history"]
    assert [(h["revision"], h["diagnosis"]) for h in history] == list(enumerate(rounds, 1))


def test_model_promoted_during_load(
    own_triton: TritonServer,
    make_gateway: Any,
    photos: list[bytes],
    real_lesions_dir: Path,
    tmp_path: Path,
) -> None:
    from tests.factories import smoke_repository

    model_dir = own_triton.repository / "skin_lesion"
    # No gate: its thresholds, fitted on 14 photos, would refuse some of the ones sent here.
    version = int(
        smoke_repository(own_triton.repository, real_lesions_dir, size=MODEL_SIZE, gate=False).name
    )
    url = f"sqlite:///{tmp_path / 'promote.db'}"
    live = make_gateway(url, own_triton.grpc_url, model_repository=own_triton.repository)
    probes: list[str] = []
    wait_until(lambda: probe(live, photos[0], probes), 120, "the gateway serving")
    loop = LoadLoop(live.url, API_KEY, photos, concurrency=8, timeout_s=30).start()
    wait_until(lambda: loop.result.statuses[201] >= 20, 60, "20 predictions before the promotion")
    promote(model_dir, version)
    own_triton.reload()  # what `python -m serving.versions promote` does to a running server

    def new_version_answers() -> bool:
        answer = probe(live, photos[0], probes)
        return answer is not None and answer["model"]["version"] == str(version)

    switched = wait_until(new_version_answers, 90, f"version {version} answering")
    n = loop.result.statuses[201]
    wait_until(lambda: loop.result.statuses[201] >= n + 10, 60, "load on the new version")
    result = loop.stop()
    assert result.statuses == {201: result.sent}, (result.statuses, result.failures[:5])
    assert_nothing_lost(result, url, probes)
    print(f"promotion: {dict(result.statuses)}, version {version} answered after {switched:.1f} s")
    with live.client() as c:
        versions = {c.get(f"/v1/predictions/{i}").json()["model"]["version"] for i in result.ids}
    assert versions == {"1", str(version)}
