"""Bytes for the hostile-input corpus, built in code: hand-written PNG chunks, JPEG segments
damaged in place, multi-frame files, and multipart bodies written by hand."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

BOUNDARY = "hostileboundary"


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png(
    width: int, height: int, rows: bytes | None = None, depth: int = 8, colour: int = 2
) -> bytes:
    """A PNG written by hand, so its header may lie about the size."""
    if rows is None:
        rows = zlib.compress((b"\x00" + bytes(width * 3 * depth // 8)) * height)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def small_png() -> bytes:
    return encode(Image.new("RGB", (32, 24), (180, 120, 90)), "PNG")


def jpeg_segment(jpeg: bytes, marker: bytes) -> tuple[int, int]:
    """Offset of ``marker`` (e.g. SOS ``ffda``) and its segment length."""
    at = jpeg.index(marker)
    return at, struct.unpack(">H", jpeg[at + 2 : at + 4])[0]


def with_size(jpeg: bytes, height: int, width: int) -> bytes:
    """The photo with its frame header (SOF0 or SOF2) declaring another size."""
    sof = jpeg.find(b"\xff\xc0")
    sof = sof if sof >= 0 else jpeg.index(b"\xff\xc2")
    out = bytearray(jpeg)
    out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def scan_damaged(jpeg: bytes, every: int) -> bytes:
    """Entropy-coded data with bytes flipped: bad Huffman codes, markers hit early."""
    sos, length = jpeg_segment(jpeg, b"\xff\xda")
    out = bytearray(jpeg)
    for i in range(sos + 2 + length + 200, len(out) - 16, every):
        out[i] ^= 0x5A
    return bytes(out)


def garbage_block(jpeg: bytes) -> bytes:
    sos, length = jpeg_segment(jpeg, b"\xff\xda")
    start = sos + 2 + length + 100
    out = bytearray(jpeg)
    out[start : start + 4096] = bytes(range(256)) * 16
    return bytes(out)


def zeroed(jpeg: bytes, marker: bytes, body_only: bool = False) -> bytes:
    at, length = jpeg_segment(jpeg, marker)
    out = bytearray(jpeg)
    start = at + 2 if body_only else at
    out[start : at + 2 + length] = bytes(at + 2 + length - start)
    return bytes(out)


def png_bad_crc(kind: bytes) -> bytes:
    data = small_png()
    at = data.index(kind)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    out = bytearray(data)
    out[at + 4 + length] ^= 0xFF
    return bytes(out)


def png_without_iend() -> bytes:
    data = small_png()
    return data[: data.index(b"IEND") - 4]


def ztxt_bomb() -> bytes:
    """A zTXt chunk that inflates to 64 MiB of text (Pillow caps text chunks)."""
    data = small_png()
    bomb = chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(64 * 2**20), 9))
    at = data.index(b"IDAT") - 4
    return data[:at] + bomb + data[at:]


def apng() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 60, 60), (60, 200, 60), (60, 60, 200))]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def mpo() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 60, 60), (60, 60, 200))]
    return encode(frames[0], "MPO", save_all=True, append_images=frames[1:])


def sixteen_bit_grey() -> bytes:
    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def sixteen_bit_rgb() -> bytes:
    row = b"\x00" + bytes(range(0, 240, 1))[: 40 * 6]
    return png(40, 30, zlib.compress(row * 30), depth=16, colour=2)


def palette_transparent() -> bytes:
    img = Image.new("P", (32, 32), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    return encode(img, "PNG", transparency=0)


def bad_exif_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # orientation values are 1-8
    return encode(Image.new("RGB", (40, 30), (120, 80, 60)), "JPEG", exif=exif.tobytes())


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body by hand: (name, filename or None, payload) per part."""
    out = b""
    for name, filename, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/jpeg\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()
        out += payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def iter_chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked (no Content-Length)."""
    return (body[i : i + size] for i in range(0, len(body), size))
