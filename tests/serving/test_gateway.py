"""End to end over real HTTP: real photos, the real Triton, SQLite and PostgreSQL records."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_NAMES, CLASSES, MALIGNANT
from contracts.rules import apply_rules, load_rules
from serving.db.tables import FeedbackEvent, Prediction
from serving.triton.client import TritonClassifier

pytestmark = [pytest.mark.triton, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SIZE = (112, 150)


def photo(real_lesions_dir: Path, row: dict[str, str]) -> bytes:
    return (real_lesions_dir / f"{row['image_id']}.jpg").read_bytes()


def upload(client: Any, data: bytes, headers: dict | None = None, **fields: Any) -> Any:
    fields.setdefault("body_location", "back")
    return client.post(
        "/v1/predictions",
        data={k: str(v) for k, v in fields.items()},
        files={"image": ("lesion.jpg", data, "image/jpeg")},
        headers=headers or {},
    )


def direct_probs(triton: Any, real_lesions_dir: Path, row: dict[str, str]) -> np.ndarray:
    """Triton called directly on training's evaluation input: the reference answer."""
    image = eval_resize(read_image(str(real_lesions_dir / f"{row['image_id']}.jpg")), SIZE)
    with TritonClassifier(triton.grpc_url) as client:
        return client.predict(image[None])[0].astype(np.float64)


def test_real_photo_gets_the_model_answer_with_rules_and_referral(
    gateway: Any,
    triton: Any,
    real_lesions_dir: Path,
    lesion_rows: list[dict],
    served_thresholds: dict[str, float],
) -> None:
    rules = load_rules(ROOT / "configs" / "body_location_rules.yaml")
    for row in lesion_rows[::7]:  # one photo of each class
        before = gateway.count()
        with gateway.client() as c:
            r = upload(c, photo(real_lesions_dir, row), body_location=row["localization"], age=40)
        assert r.status_code == 201, r.text
        body = r.json()
        assert gateway.count() == before + 1
        assert r.headers["location"] == f"/v1/predictions/{body['id']}"
        assert body["model"] == {"name": "skin_lesion", "version": "1"}
        raw = direct_probs(triton, real_lesions_dir, row)
        expected = apply_rules(raw, row["localization"], rules)
        assert [x["code"] for x in body["ranking"]] == [c for c, _ in expected.ranking]
        got = [x["probability"] for x in body["ranking"]]
        assert got == pytest.approx([p for _, p in expected.ranking], abs=1e-6)
        assert sum(got) == pytest.approx(1.0, abs=1e-5)
        for x in body["ranking"]:
            assert x["name"] == CLASS_NAMES[x["code"]] and x["malignant"] == (
                x["code"] in MALIGNANT
            )
        assert body["top_class"] == body["ranking"][0]["code"]
        referral = body["referral"]
        assert referral["thresholds"] == served_thresholds
        assert referral["threshold_source"] == "metadata.json"
        p_mal = raw[[CLASSES.index(c) for c in MALIGNANT]].sum()
        assert referral["scores"]["malignant"] >= p_mal - 1e-6
        assert referral["refer"] == any(
            referral["scores"][t] >= served_thresholds[t] for t in served_thresholds
        )
        assert body["image"]["sha256"] == row["sha256"]
        assert (body["image"]["width"], body["image"]["height"]) == (600, 450)
        t = body["timings"]
        assert t["decode_ms"] > 0 and t["inference_ms"] > 0
        assert t["total_ms"] >= t["decode_ms"] + t["inference_ms"]
        with gateway.client() as c:
            stored = c.get(f"/v1/predictions/{body['id']}").json()
        assert {k: stored[k] for k in body} == body
        assert stored["feedback"] is None


def test_face_rule_excludes_df_and_unknown_excludes_nothing(
    gateway: Any, triton: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    row = lesion_rows[3]
    raw = direct_probs(triton, real_lesions_dir, row)
    with gateway.client() as c:
        face = upload(c, photo(real_lesions_dir, row), body_location="Face").json()
        unknown = upload(c, photo(real_lesions_dir, row), body_location="unknown").json()
    (excluded,) = face["excluded"]
    assert excluded["code"] == "df" and excluded["rule_id"] == "face-no-df"
    assert "extremities" in excluded["reason"] and excluded["malignant"] is False
    assert excluded["original_probability"] == pytest.approx(raw[CLASSES.index("df")], abs=1e-6)
    assert "df" not in [x["code"] for x in face["ranking"]]
    assert unknown["excluded"] == []
    assert {x["code"]: x["probability"] for x in unknown["ranking"]} == pytest.approx(
        dict(zip(CLASSES, raw / raw.sum(), strict=True)), abs=1e-6
    )


def test_idempotent_retries_store_one_record(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict], keys: dict[str, str]
) -> None:
    data, other = photo(real_lesions_dir, lesion_rows[1]), photo(real_lesions_dir, lesion_rows[2])
    key = {"Idempotency-Key": f"retry-{gateway.settings.database_url[:8]}-1"}
    before = gateway.count()
    with gateway.client() as c:
        first = upload(c, data, key, body_location="hand")
        again = upload(c, data, key, body_location="hand")
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        # The same id for another upload is a client bug: refused, nothing stored.
        clash = upload(c, other, key, body_location="hand")
        assert clash.status_code == 422 and "different upload" in clash.json()["detail"]
        assert clash.json()["type"] == "/problems/idempotency-key-reused"
        # The form field works like the header.
        rid = f"form-{key['Idempotency-Key']}"
        a = upload(c, data, body_location="hand", request_id=rid)
        b = upload(c, data, body_location="hand", request_id=rid)
        assert (a.status_code, b.status_code, a.json()) == (201, 200, b.json())
        both = upload(c, data, {"Idempotency-Key": "x"}, body_location="hand", request_id="y")
        assert both.status_code == 422 and "differ" in both.json()["detail"]
    assert gateway.count() == before + 2
    # Request ids belong to one API key: another client's same id is its own request.
    with gateway.client(keys["other"]) as c:
        assert upload(c, data, key, body_location="hand").status_code == 201
    assert gateway.count() == before + 3


def test_concurrent_retries_of_one_request_make_one_record(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    data = photo(real_lesions_dir, lesion_rows[4])
    key = {"Idempotency-Key": f"burst-{gateway.settings.database_url[:8]}"}
    before = gateway.count()

    def send(_: int) -> Any:
        with gateway.client() as c:
            return upload(c, data, key, body_location="neck")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert gateway.count() == before + 1


def test_consent_decides_whether_the_photo_is_kept(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    images = gateway.settings.image_dir
    kept, not_kept = lesion_rows[5], lesion_rows[6]
    with gateway.client() as c:
        yes = upload(c, photo(real_lesions_dir, kept), consent_to_store_image="true").json()
        no = upload(c, photo(real_lesions_dir, not_kept), consent_to_store_image="false").json()
    path = images / kept["sha256"][:2] / f"{kept['sha256']}.jpg"
    assert yes["image"]["stored"] is True and path.read_bytes() == photo(real_lesions_dir, kept)
    assert no["image"]["stored"] is False
    assert not (images / not_kept["sha256"][:2] / f"{not_kept['sha256']}.jpg").exists()


def test_feedback_is_idempotent_and_keeps_an_audit_trail(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    with gateway.client() as c:
        pid = upload(c, photo(real_lesions_dir, lesion_rows[8])).json()["id"]
        url = f"/v1/predictions/{pid}/feedback"
        first = c.post(url, json={"diagnosis": "mel", "confirmation": "histo"})
        events = gateway.count(FeedbackEvent)
        same = c.post(url, json={"diagnosis": "mel", "confirmation": "histo"})
        assert (first.status_code, same.status_code) == (201, 200)
        assert same.json() == first.json() and first.json()["revision"] == 1
        assert gateway.count(FeedbackEvent) == events
        changed = c.post(url, json={"diagnosis": "nv", "confirmation": "follow_up"})
        assert changed.status_code == 201 and changed.json()["revision"] == 2
        assert gateway.count(FeedbackEvent) == events + 1
        record = c.get(f"/v1/predictions/{pid}").json()
    assert record["feedback"]["diagnosis"] == "nv" and record["feedback"]["revision"] == 2
    assert [
        (h["revision"], h["diagnosis"], h["confirmation"]) for h in record["feedback_history"]
    ] == [
        (1, "mel", "histo"),
        (2, "nv", "follow_up"),
    ]


def test_models_lists_the_served_version_with_metadata(gateway: Any) -> None:
    with gateway.client() as c:
        r = c.get("/v1/models")
    assert r.status_code == 200
    (model,) = r.json()["models"]
    assert model["name"] == "skin_lesion" and model["served_version"] == "1"
    (version,) = model["versions"]
    assert version["ready"] is True
    assert version["metadata"]["input_size"] == list(SIZE)
    assert version["metadata"]["classes"] == list(CLASSES)
    assert model["inputs"][0]["shape"] == ["-1", "-1", "-1", "3"]  # each version: its metadata


def test_health_readiness_metrics_and_docs(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    with gateway.client(key=None) as anonymous, gateway.client() as c:
        assert anonymous.get("/healthz").json() == {"status": "alive"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"triton": "ready", "database": "ready"}
        assert ready.json()["referral_advice"] is True
        assert ready.json()["referral"] == "validated thresholds from metadata.json of version 1"
        assert anonymous.get("/metrics").status_code == 401
        pid = upload(c, photo(real_lesions_dir, lesion_rows[9]), body_location="face").json()["id"]
        c.get(f"/v1/predictions/{pid}")
        upload(c, b"not an image")
        text = c.get("/metrics").text
        bearer = anonymous.get(
            "/metrics", headers={"Authorization": f"Bearer {c.headers['X-API-Key']}"}
        )
        assert anonymous.get("/docs").status_code == 200
        assert "/v1/predictions" in anonymous.get("/openapi.json").json()["paths"]
    assert bearer.status_code == 200
    assert 'skin_http_requests_total{method="POST",route="/v1/predictions",status="201"}' in text
    # Route templates, not raw ids, label the requests (ids would explode cardinality).
    assert 'route="/v1/predictions/{prediction_id}",status="200"' in text and pid not in text
    assert 'skin_rule_exclusions_total{cls="df",rule_id="face-no-df"}' in text
    assert "skin_predictions_total{" in text and "skin_stage_duration_seconds_bucket" in text
    assert 'skin_uploads_rejected_total{status="415"}' in text
    assert 'skin_referrals_total{refer="none"}' not in text  # every answer had advice


def without_thresholds(model_repository: Path, target: Path, keep: dict[str, Any]) -> Path:
    """A repository for the gateway to read (Triton keeps serving ``model_repository``): the
    served version's metadata.json with only the referral thresholds in ``keep``."""
    meta = json.loads((model_repository / "skin_lesion" / "1" / "metadata.json").read_text())
    meta["thresholds"] = keep
    version = target / "skin_lesion" / "1"
    version.mkdir(parents=True)
    (version / "metadata.json").write_text(json.dumps(meta))
    return target


@pytest.fixture
def no_advice_gateway(
    make_gateway: Any, triton: Any, model_repository: Path, fresh_database: str, tmp_path: Path
) -> Any:
    """A gateway on the session's Triton that reads a metadata.json with ``"thresholds": {}``
    (the shared repository is left as it is)."""
    repo = without_thresholds(model_repository, tmp_path / "repo", {})
    return make_gateway(fresh_database, triton.grpc_url, model_repository=repo)


def test_a_version_without_thresholds_ranks_but_gives_no_referral_advice(
    no_advice_gateway: Any, triton: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    """Exported without an operating point (``"thresholds": {}``): the replica is ready and
    answers rankings and exclusions, each with ``refer: null`` and why, stored as such; no
    threshold nobody validated stands in."""
    live = no_advice_gateway
    rules = load_rules(ROOT / "configs" / "body_location_rules.yaml")
    with live.client(key=None) as anonymous:
        ready = anonymous.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {k: v for k, v in ready.json().items() if k != "gate"} == {
        "status": "ready",
        "checks": {"triton": "ready", "database": "ready"},
        "referral": "no validated thresholds in version 1 (none for malignant, mel)",
        "referral_advice": False,
    }
    assert ready.json()["gate"].startswith("version 1: ")  # what its gate checks: its own line
    row = next(r for r in lesion_rows if r["dx"] == "mel")
    before = live.count()
    with live.client() as c:
        r = upload(c, photo(real_lesions_dir, row), body_location="face")
        assert r.status_code == 201, r.text
        body = r.json()
        stored = c.get(f"/v1/predictions/{body['id']}").json()
        monitoring = c.get("/v1/monitoring").json()
        metrics = c.get("/metrics").text
    raw = direct_probs(triton, real_lesions_dir, row)
    expected = apply_rules(raw, "face", rules)
    assert [x["code"] for x in body["ranking"]] == [code for code, _ in expected.ranking]
    assert [x["probability"] for x in body["ranking"]] == pytest.approx(
        [p for _, p in expected.ranking], abs=1e-6
    )
    assert [e["rule_id"] for e in body["excluded"]] == ["face-no-df"]
    referral = body["referral"]
    assert referral["refer"] is None
    assert referral["thresholds"] == {} and referral["threshold_source"] == "none"
    assert referral["reason"].startswith(
        "no referral advice: model version 1 has no validated operating point"
    )
    assert "python -m training evaluate" in referral["reason"]
    p_mal = raw[[CLASSES.index(c) for c in MALIGNANT]].sum()
    assert referral["scores"]["malignant"] >= p_mal - 1e-6
    # The record: stored, the same answer, and no decision in the refer column either.
    assert live.count() == before + 1
    assert {k: stored[k] for k in body} == body
    with live.engine.connect() as conn:
        refer = conn.execute(select(Prediction.refer).where(Prediction.id == body["id"]))
        assert refer.scalar_one() is None
    # Neither referred nor not: no referral rate from answers without advice.
    assert monitoring["live"]["predictions"] >= 1
    assert monitoring["live"]["referral_rate"] is None
    assert 'skin_referrals_total{refer="none"} 1.0' in metrics


def test_half_an_operating_point_is_none(
    make_gateway: Any,
    triton: Any,
    model_repository: Path,
    real_lesions_dir: Path,
    lesion_rows: list[dict],
    tmp_path: Path,
) -> None:
    """A threshold for mel but none for malignant: no advice at all, no default fills the gap.
    (An unreadable metadata.json gives none either: tests/serving/test_settings_security.py.)"""
    repo = without_thresholds(model_repository, tmp_path / "repo", {"mel": {"threshold": 0.2}})
    live = make_gateway(f"sqlite:///{tmp_path / 'half.db'}", triton.grpc_url, model_repository=repo)
    with live.client() as c:
        ready = c.get("/readyz")
        r = upload(c, photo(real_lesions_dir, lesion_rows[0]))
    assert ready.status_code == 200 and ready.json()["referral_advice"] is False
    assert ready.json()["referral"] == "no validated thresholds in version 1 (none for malignant)"
    assert r.status_code == 201, r.text
    referral = r.json()["referral"]
    assert referral["refer"] is None and referral["thresholds"] == {}
    assert "no threshold for malignant in its metadata.json" in referral["reason"]
    assert live.count() == 1
