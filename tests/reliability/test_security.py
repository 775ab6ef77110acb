"""Security over real HTTP: keys on every route but health, a rate limit per key, CORS closed
by default, no personal data in the gateway's logs, the feedback audit trail read back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError

from serving.ratelimit import RateLimiter, TokenBucket
from serving.settings import Settings
from tests.fixtures_serving import API_KEY, OTHER_KEY, assert_problem

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# Public by design: health probes, the API's own documentation, and the two pages, which hold
# no data and call the API with the key the user types. Everything else needs a key.
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PAGES = {"/", "/monitoring", "/problems/", "/problems/{slug}"}  # problem types' pages, too
CARDS = "/model-cards/{version}"  # public, like the API's documentation: no patient data
EXAMPLE = {"slug": "image-refused", "version": "1"}


def routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, route.path))
    return found


def test_every_route_but_health_requires_a_key(gateway: Any) -> None:
    served = routes(gateway.server.config.app)
    assert ("POST", "/v1/predictions") in served and ("GET", "/metrics") in served
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        for method, path in served:
            url = re.sub(r"\{([^}]+)\}", lambda m: EXAMPLE.get(m[1], "some-id"), path)
            if path in PUBLIC | PAGES:
                assert c.request(method, url).status_code == 200, path
                continue
            if path == CARDS:  # this version has no card: a page saying so, without a key
                assert c.request(method, url).status_code in (200, 404), path
                continue
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
                r = c.request(method, url, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert "API key" in assert_problem(r, "unauthorized", 401)["detail"]
                assert r.headers["www-authenticate"].startswith("Bearer")


def test_rate_limit_per_key_with_retry_after(
    make_gateway: Any, triton: Any, photos: list, tmp_path: Path
) -> None:
    live = make_gateway(
        f"sqlite:///{tmp_path / 'limit.db'}",
        triton.grpc_url,
        rate_limit_per_s=1.0,
        rate_limit_burst=3,
    )
    with live.client() as c, live.client(OTHER_KEY) as other:
        assert [c.get("/v1/predictions/x").status_code for _ in range(3)] == [404] * 3
        limited = c.get("/v1/predictions/x")
        assert_problem(limited, "rate-limited", 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert "retry after" in limited.json()["detail"]
        # Refused before the body is read: a 429 for an upload, and no record.
        up = c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", photos[0], "image/jpeg")},
        )
        assert up.status_code == 429 and live.count() == 0
        assert other.get("/v1/predictions/x").status_code == 404  # its own bucket
        assert c.get("/readyz").status_code == 200  # probes are never limited
        with httpx.Client(base_url=live.url) as anonymous:  # no key: 401, not 429
            assert anonymous.get("/v1/predictions/x").status_code == 401
        time.sleep(1.1)  # one token back at 1/s
        assert c.get("/v1/predictions/x").status_code == 404
        assert c.get("/v1/predictions/x").status_code == 429
        assert 'status="429"' in c.get("/metrics", headers={"X-API-Key": OTHER_KEY}).text


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 0.25  # half a token back
    assert bucket.take() == pytest.approx(0.25)
    now[0] = 10.0  # never more than the burst
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.5]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: now[0])
    assert (limiter.check("a"), limiter.check("b"), limiter.check("a")) == (0.0, 0.0, 1.0)


def test_cors_closed_by_default_and_open_only_to_named_origins(
    gateway: Any, make_gateway: Any, triton: Any, tmp_path: Path
) -> None:
    foreign = {"Origin": "https://evil.example"}
    preflight = {
        **foreign,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with gateway.client() as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=foreign).headers
        r = c.options("/v1/predictions", headers=preflight)
        assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers
    clinic = "https://clinic.example"
    live = make_gateway(
        f"sqlite:///{tmp_path / 'cors.db'}", triton.grpc_url, cors_allow_origins=[clinic]
    )
    with live.client() as c:
        ok = c.options("/v1/predictions", headers={**preflight, "Origin": clinic})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == clinic
        allowed = c.get("/v1/models", headers={"Origin": clinic}).headers
        assert allowed["access-control-allow-origin"] == clinic
        # The page's script may read the request id (to quote it) and Retry-After.
        exposed = allowed["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed
        refused = c.options("/v1/predictions", headers=preflight)
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=foreign).headers
    with pytest.raises(ValidationError, match="no '\\*'"):
        Settings(allow_no_auth=True, cors_allow_origins="*")
    assert Settings(
        allow_no_auth=True, cors_allow_origins="https://a.example, http://b:8080"
    ).cors_allow_origins == ["https://a.example", "http://b:8080"]


def test_logs_hold_no_personal_data(
    gateway_process: Any, triton: Any, model_repository: Any, photos: list
) -> None:
    """A run at debug level with a known client IP, age, site, request id and diagnosis;
    then the whole log is searched for each of them."""
    url, log = gateway_process(
        triton.grpc_url, log_level="debug", model_repository=str(model_repository)
    )
    ip, request_id = "203.0.113.77", "patient-Jane-Roe-19470312"
    with httpx.Client(
        base_url=url, headers={"X-API-Key": API_KEY, "X-Forwarded-For": ip}, timeout=60
    ) as c:
        assert wait_ready(c)
        made = c.post(
            "/v1/predictions",
            files={"image": ("jane.jpg", photos[1], "image/jpeg")},
            data={
                "body_location": "genital",
                "age": "87",
                "sex": "female",
                "request_id": request_id,
                "consent_to_store_image": "true",
            },
        )
        assert made.status_code == 201, made.text
        pid = made.json()["id"]
        assert (
            c.post(
                f"/v1/predictions/{pid}/feedback",
                json={"diagnosis": "vasc", "confirmation": "histo"},
            ).status_code
            == 201
        )
        assert c.get(f"/v1/predictions/{pid}?name=Jane").status_code == 200
        bad = c.post(
            "/v1/predictions",
            files={"image": ("jane.jpg", b"notjpeg", "image/jpeg")},
            data={"body_location": "genital", "age": "87"},
        )
        assert bad.status_code == 415
    text = log.read_text(errors="replace")
    # The access log is there, one JSON line per request, naming the upload's record...
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "serving.access"]
    upload = [line for line in access if line["request_id"] == made.headers["x-request-id"]]
    assert len(upload) == 1 and upload[0]["prediction_id"] == pid, access
    assert upload[0]["route"] == "/v1/predictions" and upload[0]["status"] == 201, upload
    leaks = {
        "client IP": ip in text,
        "request id": request_id in text,
        "age": re.search(r"\bage\W{0,4}87\b|\b87\W{0,4}(years|y/o)", text) is not None,
        "body site": "genital" in text,
        "diagnosis": re.search(r"\bvasc\b", text) is not None,
        "image hash": made.json()["image"]["sha256"] in text,
        "image bytes": photos[1][:64].hex() in text.replace(" ", "") or "\\xff\\xd8" in text,
        "query string": "name=Jane" in text,
    }
    assert not [k for k, leaked in leaks.items() if leaked], (leaks, text[-3000:])


def wait_ready(client: httpx.Client, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz?strict=true").status_code == 200:
            return True
        time.sleep(0.3)
    return False


def test_feedback_audit_trail_reads_back_the_full_history(gateway: Any, photos: list) -> None:
    with gateway.client() as c, gateway.client(OTHER_KEY) as other:
        pid = c.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", photos[2], "image/jpeg")},
        ).json()["id"]
        sent = [
            ("nv", "follow_up", c),
            ("mel", "histo", other),
            ("mel", "histo", c),
            ("bcc", "histo", c),
        ]
        statuses = [
            client.post(
                f"/v1/predictions/{pid}/feedback", json={"diagnosis": d, "confirmation": k}
            ).status_code
            for d, k, client in sent
        ]
        assert statuses == [201, 201, 200, 201]  # the repeat changes nothing
        body = c.get(f"/v1/predictions/{pid}").json()
    history = body["feedback_history"]
    assert [(h["revision"], h["diagnosis"], h["confirmation"]) for h in history] == [
        (1, "nv", "follow_up"),
        (2, "mel", "histo"),
        (3, "bcc", "histo"),
    ]
    assert history[0]["client_id"] != history[1]["client_id"]  # who changed it is kept
    times = [h["received_at"] for h in history]
    assert times == sorted(times)
    assert (body["feedback"]["diagnosis"], body["feedback"]["revision"]) == ("bcc", 3)
