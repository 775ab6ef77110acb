"""One request id per request, followed through the gateway's log, Triton and the record; and
the log lines themselves (JSON for machines, text for a terminal)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient

from serving.db.tables import Prediction
from serving.logs import JsonFormatter, TextFormatter
from serving.request_context import MAX_ID_LENGTH, accepted_id, current_request_id, enter, leave
from serving.triton.client import AsyncTritonClassifier
from tests.fixtures_serving import MODEL_SIZE

pytestmark = [pytest.mark.triton]


@pytest.fixture(scope="module")
def jpeg(real_lesions_dir: Path, lesion_rows: list[dict]) -> bytes:
    return (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "serving.access"]


def test_one_upload_followed_by_its_request_id(
    make_gateway: Any, triton: Any, tmp_path: Path, jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    live = make_gateway(f"sqlite:///{tmp_path / 'ids.db'}", triton.grpc_url)
    with live.client() as c, caplog.at_level(logging.INFO):
        made = c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", jpeg, "image/jpeg")},
            headers={"X-Request-ID": "clinic-7:upload/42"},
        )
        missing = c.get("/v1/predictions/nope")  # no id sent: one is made
    assert made.status_code == 201, made.text
    assert made.headers["x-request-id"] == "clinic-7:upload/42"
    answer = made.json()
    (line,) = [r for r in access_lines(caplog) if r.request_id == "clinic-7:upload/42"]
    assert (line.method, line.route, line.path, line.status) == (
        "POST",
        "/v1/predictions",
        "/v1/predictions",
        201,
    )
    # The line names the record, the version that answered and Triton's share of the time.
    assert line.prediction_id == answer["id"] and live.count(Prediction) == 1
    assert line.model_version == f"{answer['model']['name']}/{answer['model']['version']}"
    assert line.triton_ms == answer["timings"]["inference_ms"] > 0
    assert line.latency_ms > 0 and line.client and line.replayed is False
    made_id = missing.headers["x-request-id"]
    assert len(made_id) == 32 and int(made_id, 16) >= 0
    assert missing.json()["type"] == "/problems/not-found"
    (line,) = [r for r in access_lines(caplog) if r.request_id == made_id]
    assert (line.route, line.path, line.status) == (
        "/v1/predictions/{prediction_id}",
        "/v1/predictions/nope",
        404,
    )


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        ("x" * (MAX_ID_LENGTH + 1), "longer than"),
        ("two words", "not printable ASCII"),
        ("caf\u00e9", "not printable ASCII"),
    ],
)
def test_malformed_request_id_is_replaced_and_logged(
    make_gateway: Any,
    triton: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sent: str,
    reason: str,
) -> None:
    live = make_gateway(f"sqlite:///{tmp_path / 'bad-id.db'}", triton.grpc_url)
    with live.client() as c, caplog.at_level(logging.INFO):
        r = c.get("/healthz", headers={"X-Request-ID": sent.encode("latin-1")})
    assert r.status_code == 200
    replaced = r.headers["x-request-id"]
    assert replaced != sent and len(replaced) == 32
    warned = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING]
    assert any(replaced in m and reason in m for m in warned), warned
    assert not any(sent in m for m in warned)  # the reason is logged, never the value
    assert [r.request_id for r in access_lines(caplog)] == [replaced]


def test_accepted_ids() -> None:
    assert accepted_id(b"abc-123_X.y:z/1") == ("abc-123_X.y:z/1", None)
    for bad in (b"a\x00b", b"a\x1b[31m", b"a\nb", b"\x7f", b" "):
        kept, why = accepted_id(bad)
        assert why is not None and kept != bad.decode("latin-1") and len(kept) == 32
    assert accepted_id(None)[1] is None and accepted_id(b"")[1] is None
    assert accepted_id(None)[0] != accepted_id(None)[0]  # a fresh id each time
    assert accepted_id(b"y" * MAX_ID_LENGTH)[1] is None


def test_triton_answers_with_the_request_id(triton: Any) -> None:
    """The gateway's client sends the id with the inference; Triton echoes it in its answer
    (its logs and traces name the request by the same id)."""
    client = AsyncTritonClassifier(triton.grpc_url, timeout_s=30)
    image = np.zeros((1, *MODEL_SIZE, 3), np.uint8)

    async def infer() -> tuple[str, str]:
        _, token = enter("trace-me-1")
        try:
            args = client._infer_args(image, None, aioclient)
            inside = current_request_id() or ""
        finally:
            leave(token)
        result = await client.client.infer(**args)
        await client.close()
        return inside, result.get_response().id

    inside, echoed = asyncio.run(infer())
    assert inside == "trace-me-1" and echoed == "trace-me-1"
    assert current_request_id() is None  # nothing leaks out of the request's context


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    r = logging.LogRecord("serving.access", logging.INFO, __file__, 1, msg, args, info)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_lines_carry_the_request_id_and_the_fields() -> None:
    fmt = JsonFormatter()
    _, token = enter("req-9")
    try:
        line = json.loads(fmt.format(record("%s %d", "POST", 201, status=201, route="/v1/x")))
        failed = json.loads(fmt.format(record("unhandled", exc=True)))
    finally:
        leave(token)
    assert line["request_id"] == "req-9" and line["message"] == "POST 201"
    assert (line["level"], line["logger"], line["status"], line["route"]) == (
        "info",
        "serving.access",
        201,
        "/v1/x",
    )
    assert line["time"].endswith("+00:00")
    assert "ValueError: boom" in failed["exception"] and "\n" not in json.dumps(failed)
    outside = json.loads(fmt.format(record("started")))
    assert "request_id" not in outside  # outside a request: no id


def test_text_lines_for_a_terminal() -> None:
    fmt = TextFormatter()
    _, token = enter("req-10")
    try:
        text = fmt.format(
            record("%s %s %d", "GET", "/x", 404, status=404, route="/x", model_version=None)
        )
    finally:
        leave(token)
    assert "INFO serving.access: GET /x 404 [req-10] route=/x" in text
    assert "status=" not in text and "model_version" not in text and "{" not in text
