"""Fuzz the upload decoding path: mutated JPEG and PNG bytes into ``contracts.images.
prepare_image``; the one exception allowed out is ``ImageRejected`` (a clear 4xx).

    python -m fuzz.decode --seconds 600          # the long run (counts in docs/reliability.md)
    python -m fuzz.decode --examples 300         # what the test suite runs

Seeds are built in code: small JPEGs (baseline, progressive, greyscale, CMYK, EXIF-rotated,
MPO), PNGs (RGB, RGBA, palette with transparency, greyscale, 16-bit, interlaced, APNG) and,
when REAL_LESIONS_DIR is set, a real photo scaled down. Hypothesis picks a seed and a list of
mutations (bit flips, overwrites with boundary values, inserts, deletes, truncation, chunk
duplication), optionally re-computing PNG CRCs so mutations get past the checksum into the
decoder. A disallowed exception is saved under ``.cache/fuzz/crashes/``; so is the slowest
input. ``max_pixels`` is 2 Mpx here (not the gateway's 40) so a mutated header cannot make
every example a slow legitimate decode: the code path is the same.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from contracts.images import ImageRejected, prepare_image

ALLOWED = (ImageRejected,)
SIZE = (112, 150)
MAX_PIXELS = 2_000_000
KEEP = 8  # signature bytes left alone
CRASHES = Path(".cache/fuzz/crashes")
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@cache
def seeds() -> tuple[bytes, ...]:
    """Small valid files covering the modes and features the decoder handles."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (24, 16), c) for c in ((200, 40, 40), (40, 40, 200))]
    grey16 = Image.fromarray((rng.integers(0, 65535, (32, 40))).astype(np.uint16))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = [
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", progressive=True),
        _encode(rgb.convert("L"), "JPEG"),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb, "JPEG", exif=exif.tobytes()),
        _encode(frames[0], "MPO", save_all=True, append_images=frames[1:]),
        _encode(rgb, "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(palette, "PNG", transparency=0),
        _encode(rgb.convert("L"), "PNG"),
        _encode(grey16, "PNG"),
        _encode(rgb, "PNG", interlace=1) if _png_interlace_supported() else _encode(rgb, "PNG"),
        _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
    ]
    real = os.environ.get("REAL_LESIONS_DIR")
    if real and (photos := sorted(Path(real).glob("*.jpg"))):
        out.append(_encode(Image.open(photos[0]).reduce(5), "JPEG", quality=90))
    return tuple(out)


def _png_interlace_supported() -> bool:
    try:
        _encode(Image.new("RGB", (2, 2)), "PNG", interlace=1)
    except (TypeError, ValueError, OSError):
        return False
    return True


def recrc(data: bytes) -> bytes:
    """Re-compute every PNG chunk's CRC, so mutated chunks reach the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        length = struct.unpack(">I", out[at : at + 4])[0]
        end = at + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(out[at + 4 : end]) & 0xFFFFFFFF)
        at = end + 4
    return bytes(out)


def mutate(data: bytes, ops: list[tuple], fix_crc: bool) -> bytes:
    """Apply ``ops`` (from :func:`mutations`) to ``data``. Positions are fractions of the length
    after the 8-byte signature, which stays intact (a broken signature is a 415 before any
    decoding, and the corpus covers it)."""
    buf = bytearray(data)
    for kind, where, value in ops:
        if len(buf) <= KEEP:
            break
        at = KEEP + min(int(where * (len(buf) - KEEP)), len(buf) - KEEP - 1)
        if kind == "flip":
            buf[at] ^= 1 << (value % 8)
        elif kind == "byte":
            buf[at] = value % 256
        elif kind == "u16":
            buf[at : at + 2] = struct.pack(">H", value & 0xFFFF)
        elif kind == "u32":
            buf[at : at + 4] = struct.pack(">I", value & 0xFFFFFFFF)
        elif kind == "insert":
            buf[at:at] = bytes([value % 256]) * (1 + value % 64)
        elif kind == "delete":
            del buf[at : at + 1 + value % 256]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "duplicate":
            buf[at:at] = buf[at : at + 1 + value % 512]
    return recrc(bytes(buf)) if fix_crc else bytes(buf)


def mutations() -> st.SearchStrategy[list[tuple]]:
    where = st.floats(0, 1, allow_nan=False)
    small = st.integers(0, 2**16)
    op = st.one_of(
        st.tuples(st.sampled_from(["flip", "byte", "insert", "delete", "duplicate"]), where, small),
        st.tuples(st.sampled_from(["u16", "u32"]), where, st.sampled_from(INTERESTING)),
        st.tuples(st.just("truncate"), st.floats(0.05, 1, allow_nan=False), st.just(0)),
    )
    return st.lists(op, min_size=1, max_size=6)


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # "ok", "422", ..., "CRASH <type>"
    slowest_s: float = 0.0
    slowest: bytes = b""
    crashes: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return sum(self.outcomes.values())


def check(data: bytes, tally: Tally) -> BaseException | None:
    """Run one input; count its outcome; return a disallowed exception instead of raising."""
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        prepared = prepare_image(data, SIZE, MAX_PIXELS)
        assert prepared.model_input.shape == (*SIZE, 3) and prepared.model_input.dtype == np.uint8
        tally.outcomes["ok"] += 1
    except ALLOWED as e:
        tally.outcomes[str(e.status_code)] += 1
    except Exception as e:  # noqa: BLE001 - anything else is the finding
        tally.outcomes[f"CRASH {type(e).__name__}"] += 1
        error = e
    took = time.perf_counter() - start
    if took > tally.slowest_s:
        tally.slowest_s, tally.slowest = took, data
    return error


def _save(data: bytes, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def run(
    examples: int | None = None, seconds: float | None = None, raise_on_crash: bool = False
) -> Tally:
    """Fuzz for ``examples`` inputs or ``seconds`` (batches of 500), whichever is given.

    With ``raise_on_crash`` the first disallowed exception fails the run after Hypothesis has
    shrunk it to a small input (for tests); otherwise each is saved and the run goes on.
    """
    tally = Tally()
    budget = examples if examples is not None else 500

    @settings(
        max_examples=budget,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink] if raise_on_crash else [Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(seeds()), mutations(), st.booleans())
    def one(seed: bytes, ops: list[tuple], fix_crc: bool) -> None:
        data = mutate(seed, ops, fix_crc)
        error = check(data, tally)
        if error is not None:
            tally.crashes.append(f"{type(error).__name__}: {error} ({_save(data, CRASHES)})")
            if raise_on_crash:
                raise error

    deadline = time.monotonic() + (seconds or 0)
    one()
    while seconds is not None and time.monotonic() < deadline:
        one()
    for data in seeds():  # the seeds themselves must decode
        check(data, tally)
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.decode", description=__doc__)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--seconds", type=float, help="run this long (batches of 500 inputs)")
    group.add_argument("--examples", type=int, default=None, help="run this many inputs")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # Pillow warns about every malformed chunk it skips
    start = time.perf_counter()
    tally = run(args.examples if args.seconds is None else None, args.seconds)
    took = time.perf_counter() - start
    slow = _save(tally.slowest, CRASHES.parent / "slowest")
    print(
        f"{tally.examples} inputs in {took:.0f} s ({tally.examples / took:.0f}/s), "
        f"{len(seeds())} seeds"
    )
    for outcome, n in sorted(tally.outcomes.items()):
        print(f"  {outcome:>24}: {n}")
    print(f"slowest input {tally.slowest_s * 1000:.1f} ms ({slow})")
    for crash in tally.crashes:
        print(f"DISALLOWED {crash}", file=sys.stderr)
    return 1 if tally.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
