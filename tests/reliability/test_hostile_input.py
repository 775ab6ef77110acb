"""The hostile-input corpus over real HTTP: the exact status per case, never a 5xx, a record
only for a 201, no traceback or memory address in any answer, and a gateway still ready. A case
the gate refuses answers its reason code and leaves a refusal record, never a prediction.

Each run writes its table (case, expected, got) to ``.cache/reliability/corpus-<db>.md``;
docs/reliability.md shows it.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from serving.db.tables import Feedback, Prediction, Refusal
from tests.fixtures_serving import API_KEY, ROOT
from tests.reliability.hostile import CASES, OK, Case, Request

pytestmark = [pytest.mark.triton, pytest.mark.slow]
LEAKS = re.compile(r"Traceback|File \"|object at 0x|sqlalchemy|psycopg|site-packages", re.I)


def send_raw(url: str, req: Request) -> tuple[int, str, str]:
    """Write a request to a socket as is; the status, body and content type of the answer
    (0: none)."""
    host, port = url.removeprefix("http://").split(":")
    assert req.raw is not None
    answer = b""
    with socket.create_connection((host, int(port)), timeout=15) as s:
        # A server that refuses a request mid-way answers and closes: our send may then fail,
        # and the answer may or may not still be readable (CLOSED when it is not).
        with contextlib.suppress(OSError):
            s.sendall(req.raw + f"X-API-Key: {API_KEY}\r\n\r\n".encode() + (req.content or b""))
            s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3})", head)
    kind = re.search(rb"(?im)^content-type:\s*([^\r\n;]+)", head)
    status = int(match.group(1)) if match else 0
    return status, body.decode(errors="replace"), kind.group(1).decode() if kind else ""


def send(client: httpx.Client, url: str, req: Request, pid: str) -> tuple[int, str, str]:
    if req.raw is not None:
        return send_raw(url, req)
    r = client.request(
        req.method,
        req.path.format(pid=pid),
        data=req.data,
        files=req.files,
        content=req.content,
        headers=req.headers,
    )
    return r.status_code, r.text, r.headers.get("content-type", "")


def check(case: Case, status: int, text: str, content_type: str) -> list[str]:
    problems = []
    if status not in (case.expect if isinstance(case.expect, tuple) else (case.expect,)):
        problems.append(f"status {status}, expected {case.expect}: {text[:300]}")
    if case.code is not None and status == 422:
        code = httpx.Response(status, text=text).json().get("code")
        if code != case.code:
            problems.append(f"reason {code!r}, expected {case.code!r}: {text[:300]}")
    if LEAKS.search(text):
        problems.append(f"internals leak into the answer: {text[:300]}")
    if status >= 400 and case.group != "http":  # the app's own errors: RFC 9457 problems
        problem = httpx.Response(status, text=text).json()
        if content_type != "application/problem+json":
            problems.append(f"content type {content_type!r}, not application/problem+json")
        if problem.get("status") != status or not str(problem.get("type", "")).startswith(
            ("/problems/", "about:blank")
        ):
            problems.append(f"not a problem of status {status}: {text[:300]}")
        if not (isinstance(problem.get("detail"), str) and problem["detail"]):
            problems.append(f"no readable detail: {text[:300]}")
        if not (problem.get("title") and str(problem.get("instance", "")).startswith("/")):
            problems.append(f"no title or instance: {text[:300]}")
    return problems


def rows(gateway: Any) -> set[str]:
    with gateway.engine.connect() as conn:
        return set(conn.scalars(select(Prediction.id)))


def test_hostile_corpus(
    gated_gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    """Against a version exported with the gate (tests/fixtures_gate.py)."""
    gateway = gated_gateway
    photo = (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()
    with gateway.client() as client:
        pid = client.post(
            "/v1/predictions",
            data={"body_location": "back"},
            files={"image": ("a.jpg", photo, "image/jpeg")},
        ).json()["id"]
        failures: dict[str, list[str]] = {}
        table = []
        for case in CASES:
            before, feedback_before = rows(gateway), gateway.count(Feedback)
            refusals_before = gateway.count(Refusal)
            status, text, content_type = send(client, gateway.url, case.build(photo), pid)
            problems = check(case, status, text, content_type)
            new = rows(gateway) - before
            refused = gateway.count(Refusal) - refusals_before
            if refused != (1 if case.code is not None and status == 422 else 0):
                problems.append(f"{refused} refusal record(s) for a {status} ({case.code})")
            if status == OK and case.group != "feedback":
                created = httpx.Response(status, text=text).json()["id"]
                if new != {created}:
                    problems.append(f"201 with id {created} but new records {new}")
            elif new or gateway.count(Feedback) != feedback_before:
                problems.append(f"a refused request left records: {new}")
            if problems:
                failures[case.name] = problems
            table.append((case, status))
        ready = client.get("/readyz")
    write_table(table, gateway.settings.database_url.split(":")[0].split("+")[0])
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    assert len(CASES) >= 50 and ready.status_code == 200, ready.text


def write_table(table: list[tuple[Case, int]], db: str) -> None:
    out = ROOT / ".cache" / "reliability" / f"corpus-{db}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| group | case | expected | got | why |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {c.group} | {c.name} | {c.expect}{f' {c.code}' if c.code else ''} | {s} | {c.why} |"
        for c, s in table
    ]
    out.write_text("\n".join(lines) + "\n")
