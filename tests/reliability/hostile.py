"""The hostile-input corpus: each case built in code from one real photo, with the exact status
expected and why. ``test_hostile_input.py`` sends them to the real gateway.

A case is a request httpx can send (multipart, raw body, odd headers), or ``raw`` bytes written
to a socket for malformed HTTP that httpx refuses to produce. Decisions worth stating: content
decides the format (a JPEG sent as ``image/png`` is a JPEG); multi-frame files (APNG, MPO) are
classified on their first frame; a polyglot whose image part is complete is classified on that
image (trailing bytes never reach the model, and the gateway never serves stored bytes back);
a PNG whose IDAT CRC is wrong but whose zlib stream (Adler-32 checked) is intact is decoded.

Since the gate (``serving.gate``): a decodable image that is not a usable lesion photo gets a
422 with a reason code (``code`` of the case), recorded as a refusal. The small frames of the
mode cases are decoded and then refused as ``too_small``, which shows they were decoded (an
undecodable one is a 422 without a code); full-size photos in those modes are diagnosed, except
a greyscale one: it is decoded, then refused as ``colourless``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from tests.reliability.hostile_bytes import (
    BOUNDARY,
    apng,
    bad_exif_orientation,
    encode,
    garbage_block,
    iter_chunks,
    mpo,
    multipart,
    palette_transparent,
    png,
    png_bad_crc,
    png_without_iend,
    scan_damaged,
    sixteen_bit_grey,
    sixteen_bit_rgb,
    small_png,
    with_size,
    zeroed,
    ztxt_bomb,
)

OK = 201
REFUSED = 422  # the gate: decoded, not a usable lesion photo, a reason code in the answer
CLOSED = 0  # the server closed the connection before the client could read an answer
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Request:
    """What to send: httpx arguments, or raw bytes for a socket when ``raw`` is set.

    ``{pid}`` in ``path`` stands for a prediction the test made first.
    """

    method: str = "POST"
    path: str = "/v1/predictions"
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    content: Any = None  # bytes, or an iterator of bytes (sent chunked)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # request line and headers; the test adds X-API-Key and the body


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    expect: int | tuple[int, ...]  # the status, or the statuses allowed (SQLite vs PostgreSQL)
    why: str
    build: Callable[[bytes], Request]  # from the real photo's bytes
    code: str | None = None  # the gate's reason code, for a refusal


def form(image: bytes | None, name: str = "a.jpg", kind: str = "image/jpeg", **fields: Any):
    data = {"body_location": "back", **fields}
    return Request(data=data, files=None if image is None else {"image": (name, image, kind)})


def up(make: Callable[[bytes], bytes], name: str = "a.jpg", kind: str = "image/jpeg", **kw: Any):
    """A builder: the upload of ``make(photo)`` with ``body_location=back``."""
    return lambda photo: form(make(photo), name, kind, **kw)


def fields(**kw: Any):
    return lambda photo: form(photo, **kw)


def body(make: Callable[[bytes], Any], content_type: str | None = MULTIPART):
    headers = {"Content-Type": content_type} if content_type else {}
    return lambda photo: Request(content=make(photo), headers=headers)


def parts(photo: bytes, *extra: tuple[str, str | None, bytes]) -> list:
    return [("body_location", None, b"back"), ("image", "a.jpg", photo), *extra]


def raw(head: str, payload: bytes = b""):
    return lambda photo: Request(raw=head.encode(), content=payload)


def get(path: str, **headers: str):
    return lambda photo: Request(method="GET", path=path, headers=headers)


def feedback(payload: Any, pid: str = "{pid}", encoded: bytes | None = None):
    content = encoded if encoded is not None else json.dumps(payload).encode()
    path = f"/v1/predictions/{pid}/feedback"
    return lambda photo: Request(
        path=path, content=content, headers={"Content-Type": "application/json"}
    )


def tiny(mode: str, fmt: str, size: tuple[int, int] = (40, 30), colour: Any = 90):
    return lambda photo: encode(Image.new(mode, size, colour), fmt)


def full(mode: str, fmt: str):
    """The real photo itself, converted to ``mode`` and written as ``fmt``."""
    return lambda photo: encode(Image.open(io.BytesIO(photo)).convert(mode), fmt)


def pixels(photo: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))


def frame(value: int) -> Callable[[bytes], bytes]:
    return lambda photo: encode(Image.fromarray(np.full((450, 600, 3), value, np.uint8)), "JPEG")


def blurred(photo: bytes) -> bytes:
    return encode(Image.fromarray(cv2.GaussianBlur(pixels(photo), (0, 0), 12)), "JPEG")


def strip(photo: bytes) -> bytes:
    """The photo squashed to 1500 x 150 (10:1)."""
    small = cv2.resize(pixels(photo), (1500, 150), interpolation=cv2.INTER_AREA)
    return encode(Image.fromarray(small), "JPEG")


def sliver(photo: bytes) -> bytes:
    """100000 x 10: one million pixels (under SKIN_MAX_PIXELS), a shorter side of 10."""
    return encode(Image.new("RGB", (100_000, 10), (120, 90, 80)), "PNG")


POST = "POST /v1/predictions HTTP/1.1\r\nHost: x\r\n"
HISTO = {"diagnosis": "mel", "confirmation": "histo"}
PNG, TYPE, CORRUPT, BOMB, MODE, POLY = "image/png", "type", "corrupt", "bomb", "mode", "polyglot"
FIELD, ID, MULTI, HTTP, SIZE, FEEDBACK = "field", "id", "multipart", "http", "size", "feedback"
GATE, SMALL = "gate", "too_small"

# fmt: off
CASES = [Case(*c) for c in [
    # declared type vs content
    ("text posing as JPEG", TYPE, 415, "content is sniffed", up(lambda p: b"a photo of a mole")),
    ("HTML posing as PNG", TYPE, 415, "no PNG signature",
     up(lambda p: b"<html><script>alert(1)</script></html>", "x.png", PNG)),
    ("GIF", TYPE, 415, "only JPEG and PNG", up(tiny("RGB", "GIF"))),
    ("WebP", TYPE, 415, "only JPEG and PNG", up(tiny("RGB", "WEBP"))),
    ("BMP", TYPE, 415, "only JPEG and PNG", up(tiny("RGB", "BMP"))),
    ("TIFF", TYPE, 415, "only JPEG and PNG", up(tiny("RGB", "TIFF"))),
    ("SVG with script", TYPE, 415, "not a raster photo",
     up(lambda p: b'<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>')),
    ("PDF", TYPE, 415, "no image signature", up(lambda p: b"%PDF-1.7\n%\xe2\xe3\n1 0 obj")),
    ("ZIP", TYPE, 415, "no image signature", up(lambda p: b"PK\x03\x04" + bytes(64))),
    ("JPEG declared image/png", TYPE, OK, "content decides", up(lambda p: p, "a.png", PNG)),
    ("JPEG declared octet-stream", TYPE, OK, "content decides",
     up(lambda p: p, "blob", "application/octet-stream")),
    ("empty file", TYPE, 422, "nothing to classify", up(lambda p: b"")),
    # truncated and corrupt
    ("JPEG magic only", CORRUPT, 422, "signature, no header", up(lambda p: b"\xff\xd8\xff")),
    ("PNG magic only", CORRUPT, 422, "signature, no header", up(lambda p: b"\x89PNG\r\n\x1a\n")),
    ("JPEG cut to a third", CORRUPT, 422, "scan cut off", up(lambda p: p[: len(p) // 3])),
    ("JPEG cut in its header", CORRUPT, 422, "no scan at all", up(lambda p: p[:400])),
    ("JPEG without EOI", CORRUPT, 422, "end marker missing", up(lambda p: p[:-2])),
    ("JPEG bad Huffman codes in scan", CORRUPT, 422,
     "libjpeg would decode a damaged picture with a warning; strict decoding refuses it",
     up(lambda p: scan_damaged(p, 997))),
    ("JPEG garbage block in scan", CORRUPT, 422, "extraneous bytes before a marker",
     up(garbage_block)),
    ("JPEG zeroed SOS segment", CORRUPT, 422, "no start of scan",
     up(lambda p: zeroed(p, b"\xff\xda"))),
    ("JPEG zeroed SOS body", CORRUPT, 422, "scan header without components",
     up(lambda p: zeroed(p, b"\xff\xda", body_only=True))),
    ("JPEG zeroed Huffman table", CORRUPT, 422, "bad DHT",
     up(lambda p: zeroed(p, b"\xff\xc4", body_only=True))),
    ("JPEG height 0", CORRUPT, 422, "zero-size frame", up(lambda p: with_size(p, 0, 600))),
    ("JPEG width 0", CORRUPT, 422, "zero-size frame", up(lambda p: with_size(p, 450, 0))),
    ("PNG bad IHDR CRC", CORRUPT, 422, "header checksum wrong",
     up(lambda p: png_bad_crc(b"IHDR"), "x.png", PNG)),
    ("PNG bad IDAT CRC, data intact", CORRUPT, REFUSED,
     "zlib's Adler-32 verifies the pixels: decoded, then too small",
     up(lambda p: png_bad_crc(b"IDAT"), "x.png", PNG), SMALL),
    ("PNG corrupt zlib stream", CORRUPT, 422, "pixels cannot be inflated",
     up(lambda p: small_png()[:41] + b"\xff\xff\xff" + small_png()[44:], "x.png", PNG)),
    ("PNG cut in IDAT", CORRUPT, 422, "pixels cut off",
     up(lambda p: small_png()[:-30], "x.png", PNG)),
    ("PNG without IEND", CORRUPT, REFUSED, "all pixels present: decoded, then too small",
     up(lambda p: png_without_iend(), "x.png"), SMALL),
    ("PNG width 0", CORRUPT, 422, "zero-size image", up(lambda p: png(0, 10, b""))),
    ("PNG height 0", CORRUPT, 422, "zero-size image", up(lambda p: png(10, 0, b""))),
    # decompression bombs and enormous dimensions
    ("PNG zTXt bomb (64 MiB text)", BOMB, 422, "Pillow caps inflated text",
     up(lambda p: ztxt_bomb(), "x.png", PNG)),
    ("PNG 50000x50000", BOMB, 413, "pixels counted from the header",
     up(lambda p: png(50_000, 50_000, bytes(16)), "x.png", PNG)),
    ("PNG 2^31-1 square", BOMB, 413, "PNG's largest", up(lambda p: png(2**31 - 1, 2**31 - 1, b""))),
    ("PNG 7000x7000 (49 Mpx)", BOMB, 413, "over SKIN_MAX_PIXELS, under Pillow's own limit",
     up(lambda p: png(7000, 7000, bytes(16)), "x.png", PNG)),
    ("JPEG declaring 65535x65535", BOMB, 413, "checked before decoding",
     up(lambda p: with_size(p, 65535, 65535))),
    ("JPEG declaring 7000x7000", BOMB, 413, "over SKIN_MAX_PIXELS",
     up(lambda p: with_size(p, 7000, 7000))),
    ("PNG 5000x1 sliver", BOMB, REFUSED, "few pixels, decoded; a shorter side of 1",
     up(lambda p: png(5000, 1), "x.png"), SMALL),
    # modes and frames: the small ones are decoded, then refused as too small
    ("1x1 PNG", MODE, REFUSED, "valid, far too small", up(tiny("RGB", "PNG", (1, 1)), "x.png"),
     SMALL),
    ("1x1 JPEG", MODE, REFUSED, "valid, far too small", up(tiny("RGB", "JPEG", (1, 1))), SMALL),
    ("CMYK JPEG", MODE, REFUSED, "converted to RGB",
     up(tiny("CMYK", "JPEG", colour=(10, 200, 30, 0))), SMALL),
    ("greyscale JPEG", MODE, REFUSED, "converted to RGB", up(tiny("L", "JPEG")), SMALL),
    ("16-bit greyscale PNG", MODE, REFUSED, "high byte kept",
     up(lambda p: sixteen_bit_grey(), "x.png"), SMALL),
    ("16-bit RGB PNG", MODE, REFUSED, "reduced to 8 bits", up(lambda p: sixteen_bit_rgb(), "x.png"),
     SMALL),
    ("palette PNG, transparent", MODE, REFUSED, "on white",
     up(lambda p: palette_transparent(), "x.png"), SMALL),
    ("RGBA PNG", MODE, REFUSED, "on white",
     up(tiny("RGBA", "PNG", colour=(200, 0, 0, 90)), "x.png"), SMALL),
    ("APNG, 3 frames", MODE, REFUSED, "first frame decoded", up(lambda p: apng(), "x.png"), SMALL),
    ("MPO, 2 frames", MODE, REFUSED, "first frame decoded", up(lambda p: mpo()), SMALL),
    ("EXIF orientation 9", MODE, REFUSED, "invalid tag ignored",
     up(lambda p: bad_exif_orientation()), SMALL),
    ("full-size CMYK JPEG", MODE, OK, "converted to RGB, diagnosed", up(full("CMYK", "JPEG"))),
    ("full-size RGBA PNG", MODE, OK, "opaque: the photo itself", up(full("RGBA", "PNG"), "x.png")),
    ("full-size PNG", MODE, OK, "content decides the format", up(full("RGB", "PNG"), "x.png")),
    ("full-size greyscale JPEG", MODE, REFUSED, "decoded to RGB, R = G = B: no colour",
     up(full("L", "JPEG")), "colourless"),
    # the gate: decodable, not a usable dermoscopic lesion photo
    ("100000x10 PNG", GATE, REFUSED, "a shorter side of 10", up(sliver, "x.png"), SMALL),
    ("photo squashed to 10:1", GATE, REFUSED, "absurd aspect ratio", up(strip), "aspect_ratio"),
    ("black frame", GATE, REFUSED, "a covered lens", up(frame(0)), "uniform"),
    ("white frame", GATE, REFUSED, "a blank frame", up(frame(255)), "uniform"),
    ("photo blurred (sigma 12)", GATE, REFUSED, "out of focus", up(blurred), "blurred"),
    # polyglots
    ("JPEG+ZIP polyglot", POLY, OK, "complete JPEG; the archive never reaches the model",
     up(lambda p: p + b"PK\x03\x04" + bytes(200) + b"PK\x05\x06" + bytes(18))),
    ("PNG + trailing HTML", POLY, REFUSED, "bytes after IEND ignored; decoded, too small",
     up(lambda p: small_png() + b"<html><script>alert(1)</script></html>", "x.png"), SMALL),
    ("HTML then JPEG", POLY, 415, "must start with a signature",
     up(lambda p: b"<html></html>" + p)),
    # form fields
    ("missing body_location", FIELD, 422, "required",
     lambda p: Request(files={"image": ("a.jpg", p, "image/jpeg")})),
    ("unknown body_location", FIELD, 422, "not a site", fields(body_location="elbow")),
    ("body_location Lower_Extremity", FIELD, OK, "normalised",
     fields(body_location="Lower_Extremity")),
    ("unicode body_location", FIELD, 422, "not a site", fields(body_location="背中 🦶")),
    ("missing image", FIELD, 422, "required", lambda p: form(None)),
    ("image as a text field", FIELD, 422, "must be a file",
     lambda p: Request(data={"body_location": "back", "image": "not a file"})),
    ("age NaN", FIELD, 422, "not an integer", fields(age="NaN")),
    ("age inf", FIELD, 422, "not an integer", fields(age="inf")),
    ("age -1", FIELD, 422, "below 0", fields(age="-1")),
    ("age 150", FIELD, 422, "above 120", fields(age="150")),
    ("age 12.5", FIELD, 422, "whole years", fields(age="12.5")),
    ("age 1e3", FIELD, 422, "not an integer", fields(age="1e3")),
    ("age 0x10", FIELD, 422, "not decimal", fields(age="0x10")),
    ("age 10^30", FIELD, 422, "above 120", fields(age="1" + "0" * 30)),
    ("sex x", FIELD, 422, "male, female or unknown", fields(sex="x")),
    ("consent 'maybe'", FIELD, 422, "not a boolean", fields(consent_to_store_image="maybe")),
    ("unknown field", FIELD, 422, "extra fields forbidden", fields(colour="red")),
    ("path-traversal filename", FIELD, OK, "filename unused: stored by hash",
     up(lambda p: p, "../../../../etc/passwd", consent_to_store_image="true")),
    ("10 KiB unicode filename", FIELD, 400, "part header over the parser's limit",
     up(lambda p: p, "é" * 5000 + ".jpg")),
    # request ids: the one free text that reaches the database
    ("SQL in request_id", ID, OK, "bound parameters",
     fields(request_id="1'; DROP TABLE predictions;--")),
    ("SQL in Idempotency-Key", ID, OK, "bound parameters",
     lambda p: Request(data={"body_location": "back"}, files={"image": ("a.jpg", p, "image/jpeg")},
                       headers={"Idempotency-Key": "x' OR '1'='1"})),
    ("unicode request_id", ID, OK, "printable text is a valid id", fields(request_id="检查-🦠-ñ")),
    ("NUL in request_id", ID, 422, "control characters refused (PostgreSQL cannot store NUL)",
     fields(request_id="abc\x00def")),
    ("request_id of 201 chars", ID, 422, "over 200", fields(request_id="r" * 201)),
    ("Idempotency-Key differs from request_id", ID, 422, "ambiguous",
     lambda p: Request(data={"body_location": "back", "request_id": "a"},
                       files={"image": ("a.jpg", p, "image/jpeg")},
                       headers={"Idempotency-Key": "b"})),
    # multipart framing and content types
    ("multipart without boundary", MULTI, 400, "cannot be split",
     body(lambda p: multipart(parts(p)), "multipart/form-data")),
    ("multipart, wrong boundary", MULTI, 400, "no part found",
     body(lambda p: multipart(parts(p)), "multipart/form-data; boundary=other")),
    ("multipart unterminated", MULTI, 422, "closing boundary missing",
     body(lambda p: multipart(parts(p))[:-40])),
    ("multipart garbage", MULTI, 400, "no part found", body(lambda p: bytes(range(256)) * 64)),
    ("two image parts", MULTI, REFUSED, "which one to diagnose would be a guess",
     body(lambda p: multipart(parts(p, ("image", "b.jpg", p)))), "multiple_images"),
    ("2000 form fields", MULTI, 400, "parser's field limit",
     body(lambda p: multipart([(f"f{i}", None, b"x") for i in range(2000)]))),
    ("2 MiB text field", MULTI, 400, "text part over 1 MiB",
     body(lambda p: multipart(parts(p, ("sex", None, b"m" * 2**21))))),
    ("JSON body", MULTI, 422, "a photo needs multipart",
     body(lambda p: b'{"body_location": "back", "image": "AAAA"}', "application/json")),
    ("text/plain body", MULTI, 422, "wrong content type", body(lambda p: p, "text/plain")),
    ("no content type", MULTI, 422, "wrong content type", body(lambda p: p, None)),
    ("urlencoded, no file", MULTI, 422, "image required",
     body(lambda p: b"body_location=back&image=abc", "application/x-www-form-urlencoded")),
    # sizes
    ("image over SKIN_MAX_UPLOAD_BYTES", SIZE, 413, "the file cap",
     up(lambda p: p + bytes(10 * 2**20 - len(p) + 1))),
    ("Content-Length of 1 GiB", SIZE, 413, "refused before reading",
     raw(POST + f"Content-Length: 1073741824\r\nContent-Type: {MULTIPART}\r\n")),
    ("chunked body over the cap", SIZE, 413, "counted while streaming",
     body(lambda p: iter_chunks(multipart(parts(p + bytes(11 * 2**20)))))),
    ("chunked body under the cap", SIZE, OK, "chunked uploads are fine",
     body(lambda p: iter_chunks(multipart(parts(p))))),
    # HTTP itself
    ("1 MiB header", HTTP, (400, CLOSED), "head past SKIN_MAX_HEADER_BYTES: 400 and closed",
     raw("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + "a" * 2**20 + "\r\n")),
    ("100000 small headers", HTTP, (400, CLOSED), "head past SKIN_MAX_HEADER_BYTES",
     raw("GET /v1/models HTTP/1.1\r\nHost: x\r\n" + "x: a\r\n" * 100_000)),
    ("non-numeric Content-Length", HTTP, 400, "malformed", raw(POST + "Content-Length: abc\r\n")),
    ("negative Content-Length", HTTP, 400, "malformed", raw(POST + "Content-Length: -5\r\n")),
    ("bad chunk size", HTTP, 400, "malformed chunked body",
     raw(POST + f"Transfer-Encoding: chunked\r\nContent-Type: {MULTIPART}\r\n",
         b"zz\r\nab\r\n0\r\n\r\n")),
    ("PUT on predictions", HTTP, 405, "method not allowed", lambda p: Request(method="PUT")),
    ("NUL in prediction id", HTTP, (404, 422),
     "SQLite finds no such id; PostgreSQL cannot compare NUL: 422", get("/v1/predictions/a%00b")),
    ("NUL in Idempotency-Key", HTTP, 400, "control characters are not valid in a header",
     raw(POST + "Idempotency-Key: a\x00b\r\nContent-Length: 0\r\n")),
    ("SQL in prediction id", HTTP, 404, "bound parameter", get("/v1/predictions/1'%20OR%20'1'='1")),
    ("8 KiB prediction id", HTTP, 404, "no such id", get("/v1/predictions/" + "9" * 8192)),
    ("encoded path traversal", HTTP, 404, "no such id",
     get("/v1/predictions/..%2F..%2Fetc%2Fpasswd")),
    # feedback
    ("feedback for an unknown id", FEEDBACK, 404, "no such prediction", feedback(HISTO, "nope")),
    ("feedback diagnosis 'cancer'", FEEDBACK, 422, "seven class codes",
     feedback({**HISTO, "diagnosis": "cancer"})),
    ("feedback diagnosis 'MEL'", FEEDBACK, 422, "codes are lower case",
     feedback({**HISTO, "diagnosis": "MEL"})),
    ("feedback unknown field", FEEDBACK, 422, "extra fields forbidden",
     feedback({**HISTO, "note": "x"})),
    ("feedback null diagnosis", FEEDBACK, 422, "a string", feedback({**HISTO, "diagnosis": None})),
    ("feedback not JSON", FEEDBACK, 422, "JSON required", feedback(None, encoded=b"diagnosis=mel")),
    ("feedback nested 5000 deep", FEEDBACK, 400, "too deep to parse",
     feedback(None, encoded=b"[" * 5000 + b"]" * 5000)),
]]
# fmt: on
