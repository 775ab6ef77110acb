"""Drift end to end: streams of real HAM10000 photos through the real gateway and Triton.

Each stream goes to a fresh gateway (its own SQLite file) that compares its window with the
served version's reference. Shifted streams (darker photos, another body-site mix, one
class) raise the flags of the features they shift; a stream with the reference's site mix
of unseen validation photos keeps them down.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pandas as pd
import pytest

from contracts.drift import CAPTURE_FEATURES, NO_BASELINE
from contracts.labels import BODY_SITES, MALIGNANT
from tests.monitoring.helpers import darker, site_mix_sample, upload_stream

pytestmark = [pytest.mark.slow, pytest.mark.triton]
# Content features, against the training reference; capture features (image size, aspect,
# format) wait for a frozen baseline (tests/monitoring/test_baseline.py).
INPUT_FEATURES = ("body_site", "brightness", "contrast")


def report(gateway: Any, path: str = "/v1/monitoring", **params: Any) -> dict:
    with gateway.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def flagged(rep: dict) -> set[str]:
    return {name for name, f in rep["features"].items() if f["flag"]}


def gauges(gateway: Any) -> dict[tuple[str, str], float]:
    with gateway.client() as c:
        text = c.get("/metrics").text
    pattern = r'^(skin_drift_\w+)(?:\{feature="(\w+)"\})? (\S+)$'
    return {(m[1], m[2] or ""): float(m[3]) for m in re.finditer(pattern, text, re.M)}


@pytest.fixture(scope="module")
def reference_sites(monitored_repository: Any) -> dict[str, int]:
    meta = json.loads((monitored_repository / "skin_lesion" / "1" / "metadata.json").read_text())
    return dict(zip(BODY_SITES, meta["reference"]["features"]["body_site"]["counts"], strict=True))


def test_unshifted_stream_stays_down_and_darker_photos_raise_brightness_and_contrast(
    monitored: Any, ham_split: dict[str, pd.DataFrame], reference_sites: dict[str, int]
) -> None:
    gateway = monitored(drift_window=80, drift_min_window=50)
    # Validation photos (never in the reference's brightness sample) in the reference's mix.
    calm = site_mix_sample(ham_split["val"], reference_sites, 100, seed=1)
    first = upload_stream(gateway, calm.iloc[:40])
    early = report(gateway)
    assert early["status"] == "insufficient data" and not flagged(early)
    assert early["window"]["size"] == 40 and early["features"]["brightness"]["n"] == 40
    assert early["reference"]["version"] and early["model"]["version"] == "1"

    second = upload_stream(gateway, calm.iloc[40:])
    calm_report = report(gateway)
    assert calm_report["window"]["size"] == 80  # the last 80 of 100
    assert calm_report["status"] == "ok", calm_report["features"]
    assert not flagged(calm_report)
    assert calm_report["retraining"] == {"recommended": False, "reasons": []}
    for name in INPUT_FEATURES:  # small windows are noisy, not drifted (see contracts.drift)
        assert calm_report["features"][name]["psi"] < 0.5, name
    for name in CAPTURE_FEATURES:  # no baseline frozen: not judged
        assert calm_report["features"][name]["status"] == NO_BASELINE, name

    dark = upload_stream(gateway, calm.iloc[:80], photo=lambda p: darker(p, 0.5))
    # The same photos, half as bright: what the gateway measured, and what it concluded.
    before = {a["image"]["sha256"]: a["image"]["brightness"] for a in first}
    assert dark[0]["image"]["brightness"] < 0.6 * before[first[0]["image"]["sha256"]]
    drifted = report(gateway)
    assert drifted["window"]["size"] == 80  # only the dark stream
    assert drifted["status"] == "drift"
    assert {"brightness", "contrast"} <= flagged(drifted)
    assert "body_site" not in flagged(drifted)  # same photos, same sites
    assert drifted["features"]["brightness"]["psi"] > 1.0
    assert (
        drifted["features"]["brightness"]["psi"] > 5 * calm_report["features"]["brightness"]["psi"]
    )
    assert drifted["features"]["brightness"]["p_value"] < 1e-6
    assert drifted["retraining"]["recommended"]
    assert any(r.startswith("brightness drifted") for r in drifted["retraining"]["reasons"])

    # The same figures as Prometheus gauges.
    g = gauges(gateway)
    for name, f in drifted["features"].items():
        assert g[("skin_drift_flag", name)] == float(f["flag"])
        if f["psi"] is not None:
            assert g[("skin_drift_psi", name)] == pytest.approx(f["psi"], rel=1e-6)

    # The timeline holds every prediction once, with the measured mean brightness.
    line = report(gateway, "/v1/monitoring/timeline", days=1, bucket="hour")
    assert sum(p["n"] for p in line["points"]) == 180
    measured = [a["image"]["brightness"] for a in [*first, *second, *dark]]
    total = sum(p["brightness_mean"] * p["n"] for p in line["points"])
    assert total == pytest.approx(sum(measured), rel=1e-4)


def test_another_body_site_mix_raises_body_site(
    monitored: Any, ham_split: dict[str, pd.DataFrame]
) -> None:
    gateway = monitored()
    head_and_neck = ham_split["val"][
        ham_split["val"]["site"].isin(["face", "scalp", "ear", "neck"])
    ]
    upload_stream(gateway, head_and_neck.sample(min(100, len(head_and_neck)), random_state=2))
    rep = report(gateway)
    assert "body_site" in flagged(rep)
    site = rep["features"]["body_site"]
    assert site["psi"] > 1.0
    face = site["bins"].index("face")
    assert site["window"][face] > 0.5 > 0.1 > site["reference"][face]
    assert rep["retraining"]["recommended"]


def test_one_class_with_feedback_raises_the_diagnosis_mix_and_live_figures_follow(
    monitored: Any, ham_split: dict[str, pd.DataFrame]
) -> None:
    gateway = monitored(retrain_min_cases=30)
    val = ham_split["val"]
    mel = val[val["label"] == "mel"].sample(80, random_state=3)
    others = val[val["label"] != "mel"].groupby("label").sample(5, random_state=3)
    stream = pd.concat([mel, others]).sample(frac=1.0, random_state=3)
    answers = upload_stream(gateway, stream, feedback=True)
    rep = report(gateway)
    assert "diagnosis" in flagged(rep)
    dx = rep["features"]["diagnosis"]
    assert dx["n"] == len(stream)
    assert dx["window"][dx["bins"].index("mel")] == pytest.approx(80 / len(stream), abs=1e-6)

    # Live figures, computed here from the answers and the truth sent as feedback.
    truth = stream["label"].tolist()
    shown = [a["top_class"] for a in answers]
    per_class = {
        c: sum(s == t == c for s, t in zip(shown, truth, strict=True)) / truth.count(c)
        for c in set(truth)
    }
    live = rep["live"]
    assert live["confirmed"] == len(stream)
    for c, value in per_class.items():
        assert live["sensitivity"][c]["value"] == pytest.approx(value, abs=1e-6), c
    assert live["balanced_accuracy"] == pytest.approx(
        sum(per_class.values()) / len(per_class), abs=1e-6
    )
    malignant = [
        a["referral"]["refer"] for a, t in zip(answers, truth, strict=True) if t in MALIGNANT
    ]
    assert live["referral_sensitivity"]["cases"] == len(malignant)
    assert live["referral_sensitivity"]["value"] == pytest.approx(
        sum(malignant) / len(malignant), abs=1e-6
    )
    assert live["referral_rate"] == pytest.approx(
        sum(a["referral"]["refer"] for a in answers) / len(answers), abs=1e-6
    )
    reasons = " | ".join(rep["retraining"]["reasons"])
    assert "diagnosis drifted" in reasons
    below = live["balanced_accuracy"] < 0.5
    assert ("live balanced accuracy" in reasons) == below

    perf = report(gateway, "/v1/monitoring/performance", weeks=1)
    (version,) = perf["versions"]
    assert version["model_version"] == "1"
    (week,) = version["weeks"]
    assert week["week"] == pd.Timestamp(answers[0]["created_at"]).strftime("%G-W%V")
    assert week["balanced_accuracy"] == pytest.approx(live["balanced_accuracy"], abs=1e-6)
    assert week["predictions"] == len(stream) and week["confirmed"] == len(stream)
    assert "metrics" in version["validation"]


def test_no_reference_says_how_to_get_one(
    make_gateway: Any, triton: Any, model_repository: Any, tmp_path: Any
) -> None:
    """The shared smoke model was exported without a reference: nothing to compare with."""
    gateway = make_gateway(
        f"sqlite:///{tmp_path / 'plain.db'}", triton.grpc_url, model_repository=model_repository
    )
    rep = report(gateway)
    assert rep["status"] == "no reference" and set(rep["features"]) == set(CAPTURE_FEATURES)
    assert {f["status"] for f in rep["features"].values()} == {NO_BASELINE}
    assert "--reference-data" in rep["detail"]
    assert rep["retraining"]["recommended"] is False


def test_monitoring_needs_an_api_key(monitored: Any) -> None:
    gateway = monitored()
    with gateway.client(key=None) as c:
        for path in (
            "/v1/monitoring",
            "/v1/monitoring/timeline",
            "/v1/monitoring/performance",
            "/v1/monitoring/refusals",
            "/v1/monitoring/baseline",
        ):
            assert c.get(path).status_code == 401, path
        assert c.post("/v1/monitoring/baseline", json={}).status_code == 401


def test_gauges_refresh_in_the_background_on_both_databases(
    make_gateway: Any,
    triton: Any,
    monitored_repository: Any,
    fresh_database: str,
    ham_split: dict[str, pd.DataFrame],
) -> None:
    """Prometheus sees the drift figures without anyone asking /v1/monitoring."""
    gateway = make_gateway(
        fresh_database,
        triton.grpc_url,
        model_repository=monitored_repository,
        drift_refresh_s=0.5,
        drift_min_window=10,
    )
    stream = ham_split["val"].sample(12, random_state=5)
    answers = upload_stream(gateway, stream, feedback=True)
    rep = report(gateway)  # computed now, after every upload and feedback has landed

    def matches(g: dict) -> bool:
        return g.get(("skin_drift_window_size", "")) == 12 and all(
            g.get(("skin_drift_psi", name)) == pytest.approx(f["psi"], rel=1e-6)
            for name, f in rep["features"].items()
            if f["psi"] is not None  # capture features without a baseline: NaN
        )

    # A refresh that started before the last feedback landed shows the older diagnosis mix:
    # wait for the next background refresh (every 0.5 s) rather than race it.
    deadline = time.monotonic() + 30
    while not matches(g := gauges(gateway)):
        assert time.monotonic() < deadline, (g, rep["features"])
        time.sleep(0.5)
    assert rep["window"]["size"] == 12 and rep["live"]["confirmed"] == 12
    newest = max(pd.Timestamp(a["created_at"]) for a in answers)
    assert pd.Timestamp(rep["window"]["newest"]) == newest
    perf = report(gateway, "/v1/monitoring/performance")
    assert perf["versions"][0]["overall"]["confirmed"] == 12
