"""The class the gateway names follows the served version's decision rule (``contracts.decision``
in its ``metadata.json``): the balanced rule names argmax(log p - tau log prior), which need not
be the most probable class; the probabilities, the ranking and the referral are unchanged; the
database records the named class; a version without a rule names its argmax, as before. Real
Triton, real gateway, real photos, a real SQLite file."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts.labels import CLASSES
from contracts.metadata import METADATA_FILE, read_metadata

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# Sites where no body-location rule excludes a class, so the ranking holds all seven.
SITE = "back"


def _answers(live: Any, photos: list[bytes]) -> list[dict[str, Any]]:
    out = []
    with live.client() as c:
        for photo in photos:
            r = c.post(
                "/v1/predictions",
                data={"body_location": SITE},
                files={"image": ("a.jpg", photo, "image/jpeg")},
            )
            assert r.status_code == 201, r.text
            out.append(r.json())
    return out


def _probabilities(answer: dict[str, Any]) -> np.ndarray:
    by_code = {r["code"]: r["probability"] for r in answer["ranking"]}
    return np.array([by_code.get(c, 0.0) for c in CLASSES])


def test_the_named_class_follows_the_versions_decision_rule(
    make_gateway: Any,
    triton: Any,
    model_repository: Path,
    real_lesions_dir: Path,
    lesion_rows: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    photos = [(real_lesions_dir / f"{r['image_id']}.jpg").read_bytes() for r in lesion_rows[:6]]
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    version = repo / "skin_lesion" / "1"
    assert read_metadata(version).decision is None

    # A version exported without a rule names its most probable class, as it always did.
    plain = make_gateway(
        f"sqlite:///{tmp_path / 'plain.db'}", triton.grpc_url, model_repository=repo
    )
    before = _answers(plain, photos)
    for a in before:
        assert a["decision"] == {"rule": "argmax", "tau": 0.0, "most_probable": a["top_class"]}
        assert a["top_class"] == a["ranking"][0]["code"]

    # The class this model most often ranks first gets a large training prior: the balanced
    # rule then weighs it down (tau 1.5), and names another class for those photos.
    common = max(set(a["top_class"] for a in before), key=[a["top_class"] for a in before].count)
    priors = {c: (0.94 if c == common else 0.01) for c in CLASSES}
    tau = 1.5
    metadata = read_metadata(version)
    metadata.decision = {"rule": "balanced", "tau": tau, "class_priors": priors}
    metadata.write(version / METADATA_FILE)
    db = tmp_path / "balanced.db"
    balanced = make_gateway(f"sqlite:///{db}", triton.grpc_url, model_repository=repo)
    after = _answers(balanced, photos)

    log_priors = np.log([priors[c] for c in CLASSES])
    changed = 0
    for a, b in zip(before, after, strict=True):
        # Same model, same photos: same probabilities, ranking and referral.
        assert b["ranking"] == a["ranking"] and b["referral"] == a["referral"]
        p = _probabilities(b)
        expected = CLASSES[int(np.argmax(np.log(np.maximum(p, 1e-300)) - tau * log_priors))]
        assert b["top_class"] == expected
        assert b["decision"] == {
            "rule": "balanced",
            "tau": tau,
            "most_probable": b["ranking"][0]["code"],
        }
        changed += b["top_class"] != b["ranking"][0]["code"]
    assert changed >= 1  # the rule named something other than the most probable class

    # What is recorded is what was named, and the stored answer says how.
    with sqlite3.connect(db) as con:
        recorded = dict(con.execute("SELECT id, top_class FROM predictions").fetchall())
    assert recorded == {b["id"]: b["top_class"] for b in after}
    with balanced.client() as c:
        stored = c.get(f"/v1/predictions/{after[0]['id']}").json()
    assert stored["top_class"] == after[0]["top_class"]
    assert stored["decision"] == after[0]["decision"]


def test_a_version_with_an_unusable_rule_is_not_served(
    make_gateway: Any,
    triton: Any,
    model_repository: Path,
    real_lesions_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rule this code cannot apply makes the version's metadata.json unreadable: the gateway
    does not guess which class to name. The upload gets 503 ``model-not-loaded``, nothing is
    recorded, and the operator's log names the rule."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    path = repo / "skin_lesion" / "1" / METADATA_FILE
    raw = path.read_text()
    path.write_text(raw.replace('"thresholds"', '"decision": {"rule": "cost"}, "thresholds"', 1))
    live = make_gateway(f"sqlite:///{tmp_path / 'odd.db'}", triton.grpc_url, model_repository=repo)
    photo = next(real_lesions_dir.glob("*.jpg")).read_bytes()
    with live.client() as c:
        r = c.post(
            "/v1/predictions",
            data={"body_location": SITE},
            files={"image": ("a.jpg", photo, "image/jpeg")},
        )
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "/problems/model-not-loaded"
        assert c.get("/readyz", params={"strict": "true"}).status_code == 503
    assert live.count() == 0
    assert "unknown decision rule 'cost'" in caplog.text
