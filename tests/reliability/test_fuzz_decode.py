"""The decoding fuzz harness, bounded for CI: mutated JPEG/PNG bytes through prepare_image,
only ImageRejected allowed out. The long run is ``python -m fuzz.decode --seconds 600``."""

from __future__ import annotations

import pytest

import fuzz.decode as fuzz_decode
from contracts.images import ImageRejected, decode_image
from fuzz.decode import Tally, check, mutate, recrc, run, seeds


def test_mutated_uploads_raise_only_image_rejected() -> None:
    tally = run(examples=1000, raise_on_crash=True)
    assert not tally.crashes
    # Both sides exercised: some mutations still decode, most are refused with a status.
    assert tally.outcomes["ok"] > 0 and tally.outcomes["422"] > 0, tally.outcomes
    assert set(tally.outcomes) <= {"ok", "413", "415", "422"}
    assert tally.slowest_s < 2.0  # no input makes decoding slow


def test_seeds_decode_and_mutations_keep_the_signature() -> None:
    for data in seeds():
        decode_image(data, 10**6)
    png = next(s for s in seeds() if s.startswith(b"\x89PNG"))
    mutated = mutate(png, [("u32", 0.0, 0xFFFFFFFF), ("insert", 0.0, 3)], fix_crc=True)
    assert mutated[:8] == png[:8] and mutated != png
    assert recrc(mutated) == mutated  # CRCs already fixed


def test_the_harness_counts_other_exceptions_as_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise KeyError("a decoder bug")

    monkeypatch.setattr(fuzz_decode, "prepare_image", broken)
    tally = Tally()
    assert isinstance(check(b"x", tally), KeyError)
    assert tally.outcomes == {"CRASH KeyError": 1}
    monkeypatch.undo()
    assert check(b"\x89PNG\r\n\x1a\n", tally) is None  # ImageRejected is allowed
    assert tally.outcomes["422"] == 1
    with pytest.raises(ImageRejected):
        decode_image(b"\x89PNG\r\n\x1a\n", 10)
