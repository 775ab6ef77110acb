"""Schemathesis against the running gateway's own OpenAPI schema: every operation, positive
and negative data, every check, real small JPEG/PNG uploads for the ``image`` field.

Bounded for CI (``MAX_EXAMPLES`` per operation); the longer run is documented in
docs/reliability.md (``SCHEMATHESIS_MAX_EXAMPLES=300``).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from tests.fixtures_serving import API_KEY, ROOT, LiveGateway, gateway_settings

pytestmark = [pytest.mark.triton, pytest.mark.slow]
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30"))
IMAGE_FORMAT = "lesion-image"
AUTH = {"X-API-Key": API_KEY}
FORM: Any = None  # the upload form's JSON schema validator, set with the schema
OPTIONAL = {"age", "sex", "consent_to_store_image", "request_id"}  # of the upload form
load_all_checks()  # all 14, stateful ones included (use_after_free, ignored_auth, ...)


def encode(size: tuple[int, int], colour: tuple[int, int, int], fmt: str, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).convert(mode).save(buf, fmt)
    return buf.getvalue()


# Real, small images of every kind the gateway accepts, as the bytes of the ``image`` part.
lesion_images = st.builds(
    encode,
    st.tuples(st.integers(1, 96), st.integers(1, 96)),
    st.tuples(*[st.integers(0, 255)] * 3),
    st.sampled_from(["JPEG", "PNG"]),
    st.sampled_from(["RGB", "L"]),
)
schemathesis.openapi.format(IMAGE_FORMAT, lesion_images)


@pytest.fixture(scope="module")
def st_gateway(
    triton: Any, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    settings = gateway_settings(
        f"sqlite:///{tmp / 'st.db'}", triton.grpc_url, tmp, model_repository=model_repository
    )
    live = LiveGateway(settings).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api_schema(st_gateway: LiveGateway) -> Any:
    """The schema the gateway serves, with the image field marked as our custom format."""
    global FORM
    raw = httpx.get(f"{st_gateway.url}/openapi.json").json()
    FORM = jsonschema_rs.validator_for(raw["components"]["schemas"]["PredictionCreate"])
    raw["components"]["schemas"]["PredictionCreate"]["properties"]["image"]["format"] = IMAGE_FORMAT
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=st_gateway.url, headers=AUTH)
    return schema


def test_gateway_conforms_to_its_schema(api_schema: Any) -> None:
    """Each operation, positive then negative data, ``MAX_EXAMPLES`` cases each, all checks.

    (Driven through ``as_strategy`` rather than schemathesis' pytest plugin, whose lazy
    fixture loader does not run on pytest 9.)
    """
    statuses: Counter = Counter()
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    runs = [(op, mode, None) for op in operations for mode in GenerationMode]
    # Random ids only find 404s: the id-taking operations run again on a real prediction.
    real = {"prediction_id": a_real_prediction(api_schema.config.base_url)}
    runs += [(op, GenerationMode.POSITIVE, real) for op in operations if "{" in op.path]
    for operation, mode, path_parameters in runs:
        try:
            exercise(operation, mode, statuses, path_parameters)
        except Unsatisfiable:  # nothing in this operation can be made invalid (GET /healthz)
            statuses[(operation.label, mode.value, "none possible")] += 0
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - report all, not the first
            failures[f"{operation.label} ({mode.value}, {path_parameters})"] = describe(e)
    write_counts(statuses)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert sum(statuses.values()) >= MAX_EXAMPLES * len(operations), statuses


def exercise(
    operation: Any, mode: GenerationMode, statuses: Counter, path_parameters: dict | None = None
) -> None:
    """Generated cases for one operation: call the gateway, count the status, run the checks."""
    label = operation.label + (" (real id)" if path_parameters else "")

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: schemathesis.Case) -> None:
        if not sendable(case) or (mode is GenerationMode.NEGATIVE and valid_on_the_wire(case)):
            reject()
        if mode is GenerationMode.POSITIVE:
            fresh_request_id(case)
        response = case.call(headers=AUTH)
        statuses[(label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS.get_all(), headers=AUTH)

    run()


def a_real_prediction(base_url: str) -> str:
    photo = encode((64, 48), (180, 120, 90), "JPEG", "RGB")
    answer = httpx.post(
        f"{base_url}/v1/predictions",
        headers=AUTH,
        data={"body_location": "back"},
        files={"image": ("a.jpg", photo, "image/jpeg")},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def sendable(case: schemathesis.Case) -> bool:
    """Two things the schema cannot say about the multipart form, so such cases are skipped.
    It has no null (a client omits the field; schemathesis would send the text "null"), and
    ``Idempotency-Key`` and ``request_id`` must agree when both are sent (else 422)."""
    if not (isinstance(case.body, dict) and case.media_type == "multipart/form-data"):
        return True
    if any(v is None for v in case.body.values()):
        return False
    return not (case.body.get("request_id") and (case.headers or {}).get("Idempotency-Key"))


def fresh_request_id(case: schemathesis.Case) -> None:
    """Generated request ids repeat across cases ("0", "a"), and an id reused for another
    upload is rightly refused (422, /problems/idempotency-key-reused): a state the schema
    cannot express, tested on its own in tests/serving. A positive case gets its id made
    unique, still valid (no control characters, at most 200 characters)."""
    suffix = uuid.uuid4().hex
    if isinstance(case.body, dict) and isinstance(case.body.get("request_id"), str):
        case.body["request_id"] = f"{case.body['request_id'][:160]}-{suffix}"
    if case.headers and isinstance(case.headers.get("Idempotency-Key"), str):
        case.headers["Idempotency-Key"] = f"{case.headers['Idempotency-Key'][:160]}-{suffix}"


def valid_on_the_wire(case: schemathesis.Case) -> bool:
    """Whether a "negative" multipart case is in fact valid once sent. A number or an object in
    a text field travels as text (``request_id=1.5``, ``request_id={}``), and 0 or 1 in the
    boolean field as "0" or "1", a valid boolean for the form; an empty optional field counts
    as absent (the HTML form convention FastAPI follows); a list is sent as repeated parts, of
    which FastAPI reads the last; and schemathesis sometimes turns a null into a string that
    the field's other branch accepts. Such cases test nothing: skipped."""
    if not (isinstance(case.body, dict) and case.media_type == "multipart/form-data"):
        return False
    sent = {}
    for name, value in case.body.items():
        if isinstance(value, list):  # repeated parts: FastAPI reads the last (see the docs)
            value = value[-1] if value else None
        if value is None or (name in OPTIONAL and value == ""):
            continue
        if name == "request_id" and not isinstance(value, str):
            value = json.dumps(value)  # how it travels: a number or an object as text
        if name == "consent_to_store_image" and type(value) is int and value in (0, 1):
            value = bool(value)  # travels as "0" or "1", which the form reads as a boolean
        sent[name] = "<image bytes>" if name == "image" else value
    return FORM.is_valid(sent)


def write_counts(statuses: Counter) -> None:
    out = ROOT / ".cache" / "reliability" / "schemathesis.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| operation | data | status | cases |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {op} | {mode} | {code} | {n} |" for (op, mode, code), n in sorted(statuses.items())
    ]
    out.write_text("\n".join(lines) + "\n")


def describe(error: BaseException) -> str:
    """Schemathesis' own report of a failure (with its curl line), or the error itself."""
    parts = [str(error)]
    for sub in getattr(error, "exceptions", ()):
        parts.append(f"  {type(sub).__name__}: {sub}")
    return "\n".join(parts)[:4000]
