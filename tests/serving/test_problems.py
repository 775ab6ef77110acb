"""RFC 9457: every error is ``application/problem+json`` with a type whose page resolves, and
the OpenAPI document says so for every 4xx and 5xx."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving import problems
from serving.app import create_app
from serving.settings import Settings
from tests.fixtures_serving import ROOT, assert_problem


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with socket.socket() as s:  # nothing listens there: Triton is down, the API still answers
        s.bind(("127.0.0.1", 0))
        triton = f"127.0.0.1:{s.getsockname()[1]}"
    tmp: Path = tmp_path_factory.mktemp("problems")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'p.db'}",
        triton_url=triton,
        triton_timeout_s=1.0,
        api_key_hashes=[],
        allow_no_auth=True,
        rules_path=ROOT / "configs/body_location_rules.yaml",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_router_errors_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), "not-found", 404)
    wrong = client.delete("/v1/predictions")  # no kind of ours: about:blank, the phrase
    assert assert_problem(wrong, None, 405)["title"] == "Method Not Allowed"
    assert "allow" in wrong.headers


def test_validation_and_state_errors_are_problems(client: TestClient) -> None:
    bad = client.post("/v1/predictions/x/feedback", json={"diagnosis": "flu"})
    body = assert_problem(bad, "invalid-request", 422, "errors")
    assert {e["field"] for e in body["errors"]} >= {"diagnosis", "confirmation"}
    assert body["instance"] == "/v1/predictions/x/feedback"
    missing = client.post(
        "/v1/predictions/x/feedback", json={"diagnosis": "mel", "confirmation": "histo"}
    )
    assert "no prediction 'x'" in assert_problem(missing, "not-found", 404)["detail"]
    both = client.post(
        "/v1/predictions",
        data={"body_location": "back", "request_id": "a"},
        files={"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
        headers={"Idempotency-Key": "b"},
    )
    body = assert_problem(both, "invalid-request", 422, "errors")
    assert body["errors"][0]["field"] == "request_id"
    down = client.get("/v1/models")  # Triton is down
    assert_problem(down, "model-server-unavailable", 503)
    assert down.headers["retry-after"]


def test_every_type_resolves_to_its_page(client: TestClient) -> None:
    index = client.get("/problems/")
    assert index.status_code == 200
    for kind in problems.KINDS.values():
        assert kind.type in index.text
        page = client.get(kind.type)
        assert page.status_code == 200 and kind.title in page.text and str(kind.status) in page.text
    assert client.get("/problems/no-such-kind").status_code == 404


def test_openapi_documents_every_error_as_a_problem(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    errors = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for code, answer in operation["responses"].items():
                if code[0] not in "45":
                    continue
                errors += 1
                assert set(answer.get("content", {})) <= {problems.MEDIA_TYPE}, (path, method, code)
                for example in (
                    answer.get("content", {})
                    .get(problems.MEDIA_TYPE, {})
                    .get("examples", {})
                    .values()
                ):
                    value = example["value"]
                    assert str(value["status"]) == code and value["type"].startswith("/problems/")
    assert errors > 20
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's default 422 is replaced everywhere
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "instance"}
    upload = spec["paths"]["/v1/predictions"]["post"]["responses"]
    assert set(upload["503"]["content"][problems.MEDIA_TYPE]["examples"]) == {
        "model-server-unavailable",
        "model-not-loaded",
        "database-unavailable",
    }


def test_kinds_are_consistent() -> None:
    for slug, kind in problems.KINDS.items():
        assert kind.slug == slug and 400 <= kind.status < 600 and kind.about.endswith(".")
    with pytest.raises(ValueError, match="is a 404"):
        problems.body("not-found", 400, "x", "/")
