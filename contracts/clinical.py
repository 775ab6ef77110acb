"""The patient metadata a fusion model takes beside the image: age, sex and body site, encoded
ONCE, here, for training, export and serving alike (docs: DESIGN.md "Contracts").

The encoding is a ``float32`` vector of :data:`DIM` numbers, laid out as :data:`FIELDS` says:

- ``age``: years / 100, clipped to [0, 1]; 0 when unknown.
- ``age_known``: 1 when the age is known, else 0 (so "unknown" is not read as a newborn).
- ``sex=male``, ``sex=female``: one-hot; both 0 when unknown.
- ``site=<s>`` for every body site of :data:`contracts.labels.BODY_SITES` but ``unknown``, in
  that order: one-hot; all 0 when unknown.

Every field has an explicit "unknown", and nothing a client may send is an error: an age that is
None, NaN, negative or not a number, a sex other than male/female, a site this code does not
know (a newer client's, a typo) all encode as unknown. So a missing field degrades the answer
(training masks fields at random, ``data.clinical_dropout``), never refuses it.

An exported fusion version records :func:`describe` under ``clinical`` in its ``metadata.json``;
a reader whose :data:`ENCODING_VERSION` differs refuses it (:func:`check_compatible`), because
the same numbers would mean other things. Change the layout only with a new version string.

Pure numpy and the standard library: the gateway imports this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from contracts.labels import BODY_SITES, UNKNOWN_SITE

ENCODING_VERSION = "clinical-v1"
AGE_SCALE = 100.0
SEX_VALUES: tuple[str, ...] = ("male", "female")
SITE_VALUES: tuple[str, ...] = tuple(s for s in BODY_SITES if s != UNKNOWN_SITE)
FIELDS: tuple[str, ...] = (
    "age",
    "age_known",
    *(f"sex={s}" for s in SEX_VALUES),
    *(f"site={s}" for s in SITE_VALUES),
)
DIM = len(FIELDS)
_SEX_OFFSET = 2
_SITE_OFFSET = _SEX_OFFSET + len(SEX_VALUES)
# Each field's positions in the vector: what "this field unknown" zeroes (training's masking).
FIELD_SLICES: dict[str, slice] = {
    "age": slice(0, _SEX_OFFSET),
    "sex": slice(_SEX_OFFSET, _SITE_OFFSET),
    "site": slice(_SITE_OFFSET, _SITE_OFFSET + len(SITE_VALUES)),
}
_SEX_INDEX = {s: _SEX_OFFSET + i for i, s in enumerate(SEX_VALUES)}
_SITE_INDEX = {s: _SITE_OFFSET + i for i, s in enumerate(SITE_VALUES)}


class ClinicalEncodingError(ValueError):
    """A version's metadata encoding is not the one this code writes and reads."""


def known_age(age: Any) -> float | None:
    """``age`` as a finite, non-negative number of years, or None (unknown)."""
    if age is None or isinstance(age, bool):
        return None
    try:
        value = float(age)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _text(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def encode(age: Any = None, sex: Any = None, site: Any = None) -> np.ndarray:
    """One patient's encoding, ``float32 [DIM]`` (module doc); unknowns never raise."""
    out = np.zeros(DIM, np.float32)
    years = known_age(age)
    if years is not None:
        out[0] = min(years / AGE_SCALE, 1.0)
        out[1] = 1.0
    sex_index = _SEX_INDEX.get(_text(sex))
    if sex_index is not None:
        out[sex_index] = 1.0
    site_index = _SITE_INDEX.get(_text(site))
    if site_index is not None:
        out[site_index] = 1.0
    return out


def encode_batch(ages: Iterable[Any], sexes: Iterable[Any], sites: Iterable[Any]) -> np.ndarray:
    """Many patients' encodings, ``float32 [N, DIM]``, one row per (age, sex, site)."""
    rows = [encode(*patient) for patient in zip(ages, sexes, sites, strict=True)]
    return np.stack(rows) if rows else np.zeros((0, DIM), np.float32)


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """:func:`encode_batch` of mappings with ``age``, ``sex`` and ``site`` (HAM10000's
    ``localization`` accepted for ``site``); a missing key is unknown."""
    rows = list(rows)
    return encode_batch(
        [r.get("age") for r in rows],
        [r.get("sex") for r in rows],
        [r.get("site", r.get("localization")) for r in rows],
    )


UNKNOWN: np.ndarray = encode()
UNKNOWN.setflags(write=False)


def unknown_fields(age: Any = None, sex: Any = None, site: Any = None) -> list[str]:
    """The fields of a patient that encode as unknown (``age``, ``sex``, ``site``): what an
    answer says was not used."""
    vector = encode(age, sex, site)
    return [name for name, part in FIELD_SLICES.items() if not vector[part].any()]


def describe() -> dict[str, Any]:
    """What ``metadata.json``'s ``clinical`` records of the encoding a version was built for."""
    return {
        "version": ENCODING_VERSION,
        "dim": DIM,
        "fields": list(FIELDS),
        "age_scale": AGE_SCALE,
        "sexes": list(SEX_VALUES),
        "sites": list(SITE_VALUES),
        "unknown": "every field's one-hot all zeros; age 0 with age_known 0",
    }


def check_compatible(clinical: Mapping[str, Any] | None, source: str = "the version") -> None:
    """Refuse a version whose metadata encoding is not this code's.

    Args:
        clinical: ``metadata.json``'s ``clinical`` (None: an image-only version, always fine).
        source: what to call the version in the message.

    Raises:
        ClinicalEncodingError: another encoding version, or the same version string with
            another dimension or field list; the message names both versions.
    """
    if clinical is None:
        return
    theirs = clinical.get("version") if isinstance(clinical, Mapping) else None
    if theirs != ENCODING_VERSION:
        raise ClinicalEncodingError(
            f"{source} was exported for the clinical metadata encoding {theirs!r}, but this code "
            f"encodes {ENCODING_VERSION!r}: the numbers it takes would mean other things. Serve "
            "it with the release that encodes its version, or export it again with this one"
        )
    if clinical.get("dim") != DIM or list(clinical.get("fields") or []) != list(FIELDS):
        raise ClinicalEncodingError(
            f"{source} names the clinical encoding {theirs!r} (this code's {ENCODING_VERSION!r}) "
            f"but records {clinical.get('dim')!r} fields {clinical.get('fields')!r}, not this "
            f"code's {DIM} {list(FIELDS)}: the version was written by an incompatible release"
        )
