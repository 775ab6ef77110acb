"""Bad input over real HTTP: a clear 4xx, no record, and a gateway still ready afterwards."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from serving.db.tables import Feedback, Prediction

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def bomb_png(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + bytes(3 * side))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def jpeg(real_lesions_dir: Path, lesion_rows: list[dict]) -> bytes:
    return (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()


def assert_refused(gateway: Any, response: httpx.Response, status: int, *words: str) -> None:
    """A clear JSON error, no traceback, no new record, and the service still ready."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in response.text
    for word in words:
        assert word in detail, detail
    with httpx.Client(base_url=gateway.url) as c:
        assert c.get("/readyz").status_code == 200


def post(
    gateway: Any, fields: dict, files: dict | None, key: str | None = "main", **kw: Any
) -> Any:
    with gateway.client() as c:
        if key != "main":
            c.headers.pop("X-API-Key")
            if key:
                c.headers["X-API-Key"] = key
        return c.post("/v1/predictions", data=fields, files=files, **kw)


def image(data: bytes, name: str = "lesion.jpg", kind: str = "image/jpeg") -> dict:
    return {"image": (name, data, kind)}


CASES = {
    "empty file": ({"body_location": "back"}, lambda j: image(b""), 422, ["empty"]),
    "text posing as JPEG": (
        {"body_location": "back"},
        lambda j: image(b"I am certainly a photo of a mole"),
        415,
        ["neither JPEG nor PNG"],
    ),
    "truncated JPEG": (
        {"body_location": "back"},
        lambda j: image(j[: len(j) // 3]),
        422,
        ["truncated or corrupt"],
    ),
    "decompression bomb": (
        {"body_location": "back"},
        lambda j: image(bomb_png(50_000), "x.png", "image/png"),
        413,
        ["pixels"],
    ),
    "unknown body site": (
        {"body_location": "elbow"},
        lambda j: image(j),
        422,
        ["body_location", "'lower extremity'", "'unknown'"],
    ),
    "missing body site": ({}, lambda j: image(j), 422, ["body_location: Field required"]),
    "missing image": ({"body_location": "back"}, lambda j: None, 422, ["image: Field required"]),
    "age out of range": (
        {"body_location": "back", "age": "150"},
        lambda j: image(j),
        422,
        ["age", "120"],
    ),
    "unknown sex": ({"body_location": "back", "sex": "x"}, lambda j: image(j), 422, ["sex"]),
    "unknown field": (
        {"body_location": "back", "colour": "red"},
        lambda j: image(j),
        422,
        ["colour", "Extra inputs"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_upload_is_refused_without_a_record(gateway: Any, jpeg: bytes, case: str) -> None:
    fields, files, status, words = CASES[case]
    before = gateway.count()
    assert_refused(gateway, post(gateway, fields, files(jpeg)), status, *words)
    assert gateway.count() == before


def test_api_keys_are_required(gateway: Any, jpeg: bytes) -> None:
    before = gateway.count()
    missing = post(gateway, {"body_location": "back"}, image(jpeg), key=None)
    assert_refused(gateway, missing, 401, "missing API key", "X-API-Key")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = post(gateway, {"body_location": "back"}, image(jpeg), key="not-a-key")
    assert_refused(gateway, wrong, 401, "invalid API key")
    assert gateway.count() == before
    with httpx.Client(base_url=gateway.url) as c:
        for path in ("/v1/models", "/v1/predictions/x"):
            assert c.get(path).status_code == 401


def test_unknown_prediction_and_bad_feedback(gateway: Any, jpeg: bytes) -> None:
    with gateway.client() as c:
        missing = c.get("/v1/predictions/no-such-id")
        assert_refused(gateway, missing, 404, "no prediction 'no-such-id'")
        feedback = c.post(
            "/v1/predictions/no-such-id/feedback",
            json={"diagnosis": "mel", "confirmation": "histo"},
        )
        assert_refused(gateway, feedback, 404, "no prediction")
        pid = c.post("/v1/predictions", data={"body_location": "back"}, files=image(jpeg)).json()[
            "id"
        ]
        before = gateway.count(Feedback)
        bad = c.post(f"/v1/predictions/{pid}/feedback", json={"diagnosis": "cancer"})
        assert_refused(gateway, bad, 422, "diagnosis", "'mel'", "confirmation: Field required")
        assert gateway.count(Feedback) == before


def test_size_limits_bytes_while_streaming_and_pixels(
    make_gateway: Any, triton: Any, tmp_path: Path, jpeg: bytes, model_repository: Path
) -> None:
    assert 200_000 < len(jpeg) < 265_000  # the photo passes the body cap but not the image cap
    small = make_gateway(
        f"sqlite:///{tmp_path / 'small.db'}",
        triton.grpc_url,
        max_upload_bytes=200_000,
        max_pixels=100_000,
        model_repository=model_repository,
    )
    # The image itself is over max_upload_bytes.
    r = post(small, {"body_location": "back"}, image(jpeg))
    assert_refused(small, r, 413, f"{len(jpeg)} bytes", "200000")
    # A declared Content-Length over the body cap: refused before the body is read.
    big = jpeg * 2
    assert_refused(small, post(small, {"body_location": "back"}, image(big)), 413, "larger than")
    # A chunked upload (no Content-Length) over the cap: cut off while it streams.
    boundary = "skinboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="body_location"\r\n\r\nback\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 x 64 KiB: far over the cap
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    with small.client() as c:
        r = c.post(
            "/v1/predictions",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert "content-length" not in r.request.headers  # it really was chunked
    assert_refused(small, r, 413, "larger than")
    # Pixels: the real photo is 600x450 = 270,000 pixels.
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, "JPEG", quality=30)  # under the byte cap
    r = post(small, {"body_location": "back"}, image(buf.getvalue()))
    assert_refused(small, r, 413, "600x450", "100000")
    assert small.count(Prediction) == 0
