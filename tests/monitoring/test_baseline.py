"""Monitoring a clinic can leave on: the real full-size photos through the real gateway and
Triton stay quiet, before a capture baseline is frozen and after; shifted streams still alarm
on their own features; refused uploads are counted per day and never enter the drift window.

The photos (``real_lesions``) are 600 x 450, as a dermatoscope sends them; the training
reference holds HAM10000's 200 x 150 copies. Each test has its own gateway and SQLite file;
a stream is the 28 photos (each once: a photo sent twice would count as two independent
observations in the tests), and so is the window (``drift_window=28``, judged from 25).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from PIL import Image
from sqlalchemy import func, select, text

from contracts.drift import CAPTURE_FEATURES, NO_BASELINE, DriftBounds, feature_drift
from serving.db import Database, crud
from serving.db import monitoring as queries
from serving.db.engine import alembic_config, migrating
from serving.db.tables import Base, CaptureBaseline, Feedback, Prediction, Refusal
from serving.monitoring import FREEZE_COMMAND
from tests.monitoring.helpers import darker, post, upload_stream

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.triton]
WINDOW = {"drift_window": 28, "drift_min_window": 25}
N = 28
CONTENT = ("body_site", "predicted_class", "brightness", "contrast")


@pytest.fixture(scope="module")
def full_size(real_lesions_dir: Path) -> pd.DataFrame:
    """The 28 real photos with their site, sex, age and diagnosis, as upload_stream sends them."""
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    return pd.DataFrame(
        {
            "image_id": table.image_id,
            "path": [str(real_lesions_dir / f"{i}.jpg") for i in table.image_id],
            "site": table.localization,
            "sex": table.sex,
            "age": table.age,
            "label": table.dx,
            "dx_type": table.dx_type,
        }
    )


def rescaled(path: str, size: tuple[int, int] = (200, 150)) -> bytes:
    """The photo resized to ``size`` (width, height), as a JPEG (quality 95)."""
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=95
    )
    return out.getvalue()


def as_png(path: str) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, "PNG")
    return out.getvalue()


def report(gateway: Any, path: str = "/v1/monitoring", **params: Any) -> dict:
    with gateway.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def flagged(rep: dict) -> set[str]:
    return {name for name, f in rep["features"].items() if f["flag"]}


def figures(rep: dict) -> dict[str, tuple]:
    """Each feature's status, PSI and p-value: what a failed assertion shows."""
    return {n: (f["status"], f["psi"], f["p_value"]) for n, f in rep["features"].items()}


def gauges(gateway: Any) -> dict[tuple[str, str], float]:
    with gateway.client() as c:
        body = c.get("/metrics").text
    pattern = r'^(skin_\w+)(?:\{feature="(\w+)"\})? (\S+)$'
    return {(m[1], m[2] or ""): float(m[3]) for m in re.finditer(pattern, body, re.M)}


def monitoring_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.monitoring", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def freeze_cli(gateway: Any, *args: str) -> subprocess.CompletedProcess:
    url = gateway.settings.database_url
    return monitoring_cli("--database-url", url, "freeze-baseline", *args)


def baselines(gateway: Any) -> int:
    return gateway.count(CaptureBaseline)


def test_full_size_photos_stay_quiet_without_and_with_a_frozen_baseline(
    monitored: Any, full_size: pd.DataFrame, monitored_repository: Path
) -> None:
    gateway = monitored(**WINDOW)
    answers = upload_stream(gateway, full_size)
    assert {(a["image"]["width"], a["image"]["height"]) for a in answers} == {(600, 450)}

    before = report(gateway)
    assert before["window"]["size"] == N
    assert before["status"] == "ok", figures(before)
    assert not flagged(before)
    assert before["retraining"] == {"recommended": False, "reasons": []}
    assert before["baseline"] is None and FREEZE_COMMAND in before["baseline_detail"]
    for name in CAPTURE_FEATURES:
        f = before["features"][name]
        assert (f["group"], f["status"], f["psi"], f["n"]) == ("capture", NO_BASELINE, None, N)
        assert FREEZE_COMMAND in f["detail"]
    for name in CONTENT:
        f = before["features"][name]
        assert f["group"] == "content" and f["status"] == "ok", (name, f)
        assert f["compared_with"] == f"training reference {before['reference']['version']}"
    # What the issue saw: against the training copies (all 200 x 150) this window alarms.
    meta = json.loads((monitored_repository / "skin_lesion" / "1" / "metadata.json").read_text())
    training_width = meta["reference"]["features"]["image_width"]
    assert feature_drift(training_width, [600] * N, DriftBounds(0.2, 0.01, 25))["flag"]
    g = gauges(gateway)
    assert g[("skin_retraining_recommended", "")] == 0.0
    assert all(g[("skin_drift_flag", name)] == 0.0 for name in before["features"])
    assert np.isnan(g[("skin_drift_psi", "image_width")])
    line = report(gateway, "/v1/monitoring/timeline", days=1, bucket="day")
    assert {p["psi"]["image_width"] for p in line["points"]} == {None}

    # Too few predictions for the baseline asked: refused, said why, nothing frozen.
    refused = freeze_cli(gateway, "--min-records", "100")
    assert refused.returncode == 2, refused.stderr
    assert "only 28 predictions" in refused.stderr and "at least 100" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert baselines(gateway) == 0 and report(gateway)["baseline"] is None

    done = freeze_cli(gateway, "--days", "1", "--min-records", str(N))
    assert done.returncode == 0, done.stderr
    assert "froze capture baseline 1" in done.stdout and "28 predictions" in done.stdout
    frozen = report(gateway)
    baseline = frozen["baseline"]
    assert baseline["records"] == N and baseline["frozen_by"] == "cli"
    assert baseline["features"] == sorted(CAPTURE_FEATURES)
    assert frozen["baseline_detail"] is None
    created = sorted(pd.Timestamp(a["created_at"]) for a in answers)
    assert pd.Timestamp(baseline["oldest"]) == created[0]
    assert pd.Timestamp(baseline["newest"]) == created[-1]
    frozen_at = pd.Timestamp(baseline["frozen_at"])
    assert created[-1] < frozen_at <= pd.Timestamp.now(tz="UTC")
    for name in CAPTURE_FEATURES:
        f = frozen["features"][name]
        assert f["status"] == "ok" and f["psi"] == 0.0, (name, f)
        assert f["compared_with"] == (
            f"capture baseline 1 frozen {frozen_at:%Y-%m-%d %H:%M} UTC from 28 predictions"
        )
    assert frozen["status"] == "ok" and not frozen["retraining"]["recommended"]

    # More of the same: the window holds only the new uploads, and stays quiet.
    upload_stream(gateway, full_size.sample(frac=1.0, random_state=7))
    again = report(gateway)
    assert again["window"]["size"] == N
    assert pd.Timestamp(again["window"]["oldest"]) > created[-1]
    assert again["status"] == "ok" and not flagged(again), figures(again)
    assert again["retraining"] == {"recommended": False, "reasons": []}
    assert {again["features"][n]["status"] for n in (*CAPTURE_FEATURES, *CONTENT)} == {"ok"}
    line = report(gateway, "/v1/monitoring/timeline", days=1, bucket="day")
    assert sum(p["n"] for p in line["points"]) == 2 * N
    for name in CAPTURE_FEATURES:  # every bucket against the baseline now
        assert {p["psi"][name] for p in line["points"] if p["n"] >= 25} == {0.0}, name
    shown = monitoring_cli("--database-url", gateway.settings.database_url, "show-baseline")
    assert shown.returncode == 0 and '"records": 28' in shown.stdout


def test_after_a_baseline_shifted_streams_alarm_on_their_own_features(
    monitored: Any, full_size: pd.DataFrame
) -> None:
    gateway = monitored(**WINDOW)
    upload_stream(gateway, full_size)
    with gateway.client() as c:
        few = post(c, "/v1/monitoring/baseline", json={"days": 1, "min_records": 1000})
        assert few.status_code == 409
        assert few.json()["type"] == "/problems/too-few-predictions"
        assert "only 28 predictions" in few.json()["detail"]
        assert "at least 1000" in few.json()["detail"]
        assert post(c, "/v1/monitoring/baseline", json={"days": -1}).status_code == 422
        # With both bounds, the later one: the last day, not everything since 2000.
        both = post(
            c, "/v1/monitoring/baseline", json={"days": 1, "since": "2000-01-01", "min_records": 99}
        )
        assert both.status_code == 409
        since = re.search(r"since (\S+);", both.json()["detail"])[1]
        assert pd.Timestamp(since) > pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1, minutes=5)
        assert baselines(gateway) == 0
        r = post(c, "/v1/monitoring/baseline", json={"days": 1, "min_records": N})
        assert r.status_code == 201, r.text
    frozen = r.json()
    assert frozen["records"] == N and frozen["frozen_by"] != "cli"
    listed = report(gateway, "/v1/monitoring/baseline")
    assert listed["current"]["id"] == frozen["id"]
    assert listed["current"]["histograms"]["image_width"]["counts"][4] == N  # 512-640 px
    assert [b["id"] for b in listed["history"]] == [frozen["id"]]

    # The same photos rescaled to the training copies' 200 x 150: the size alarms, against
    # the baseline; aspect, format and the content do not.
    upload_stream(gateway, full_size, photo=rescaled)
    small = report(gateway)
    assert small["status"] == "drift"
    assert flagged(small) == {"image_width", "image_height"}, figures(small)
    assert small["features"]["image_width"]["p_value"] < 1e-6
    assert small["retraining"]["recommended"]
    width_reason = next(r for r in small["retraining"]["reasons"] if r.startswith("image_width"))
    assert "capture baseline" in width_reason and FREEZE_COMMAND in width_reason
    g = gauges(gateway)
    assert g[("skin_drift_flag", "image_width")] == 1.0
    assert g[("skin_drift_flag", "image_aspect")] == 0.0
    assert g[("skin_retraining_recommended", "")] == 1.0

    # Full size again but exported as PNG: the format alone.
    upload_stream(gateway, full_size, photo=as_png)
    png = report(gateway)
    assert flagged(png) == {"image_format"}, figures(png)

    # Full size, JPEG, half as bright: a content shift, against the training reference.
    upload_stream(gateway, full_size, photo=lambda p: darker(p, 0.5))
    dark = report(gateway)
    assert "brightness" in flagged(dark)
    assert not flagged(dark) & set(CAPTURE_FEATURES)
    assert any(r.startswith("brightness drifted") for r in dark["retraining"]["reasons"])

    # Freezing again adds a baseline; the first stays on record.
    with gateway.client() as c:
        again = post(c, "/v1/monitoring/baseline", json={"min_records": N})
    assert again.status_code == 201 and again.json()["id"] != frozen["id"]
    history = report(gateway, "/v1/monitoring/baseline")["history"]
    assert [b["id"] for b in history] == [again.json()["id"], frozen["id"]]
    assert history[0]["records"] == 4 * N


def test_refused_uploads_are_counted_per_day_and_never_in_the_window(
    monitored: Any, full_size: pd.DataFrame
) -> None:
    """The gate refuses the rescaled copies (shorter side 150 < 300, set for this test): they
    appear in the refusal rate, per UTC day and reason, never in the drift window."""
    gateway = monitored(**WINDOW, quality_min_short_side=300)
    answers = upload_stream(gateway, full_size)
    refused_at = []
    with gateway.client() as c:
        for row in full_size.iloc[:10].itertuples():
            r = post(
                c,
                "/v1/predictions",
                data={"body_location": row.site},
                files={"image": ("x.jpg", rescaled(row.path), "image/jpeg")},
            )
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "too_small"
            refused_at.append(r.json()["refusal"]["created_at"])
    assert gateway.count(Refusal) == 10 and gateway.count(Prediction) == N

    # Two days ago: refusals of another reason, written as the gateway writes them, so the
    # days are told apart (and the day between has no upload at all).
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    db = Database(gateway.settings.database_url)
    with db.sessions.begin() as s:
        for i in range(3):
            s.add(
                Refusal(
                    id=f"old-{i}", created_at=two_days_ago, client_id="c", request_id=None,
                    request_fingerprint="f" * 64, reason="uniform", message="uniform frame",
                    mode="reject", answer={}, image_stored=False,
                )
            )  # fmt: skip
    db.dispose()

    rep = report(gateway)
    assert rep["window"]["size"] == N  # the refused uploads are not in it
    assert {f["n"] for n, f in rep["features"].items() if n != "diagnosis"} == {N}
    assert rep["status"] == "ok" and not flagged(rep), figures(rep)

    # Expected per UTC day, from the times the gateway answered with.
    def day(when: str | datetime) -> str:
        return pd.Timestamp(when).tz_convert("UTC").date().isoformat()

    expected: dict[str, dict[str, Any]] = {}
    events = [(a["created_at"], None) for a in answers]
    events += [(t, "too_small") for t in refused_at] + [(two_days_ago, "uniform")] * 3
    for when, reason in events:
        e = expected.setdefault(day(when), {"predictions": 0, "refusals": 0, "by_reason": {}})
        if reason is None:
            e["predictions"] += 1
        else:
            e["refusals"] += 1
            e["by_reason"][reason] = e["by_reason"].get(reason, 0) + 1
    refusals = rep["refusals"]
    assert refusals["days"] == 30 and len(refusals["per_day"]) == 30
    listed = [d["day"] for d in refusals["per_day"]]
    assert listed[-1] == datetime.now(UTC).date().isoformat()
    assert listed == sorted(listed) and set(expected) <= set(listed)
    for d in refusals["per_day"]:
        e = expected.get(d["day"], {"predictions": 0, "refusals": 0, "by_reason": {}})
        assert {k: d[k] for k in e} == e, d
        uploads = e["predictions"] + e["refusals"]
        assert d["rate"] == (pytest.approx(e["refusals"] / uploads) if uploads else None), d
    assert refusals["total"] == {
        "predictions": N,
        "refusals": 13,
        "rate": pytest.approx(13 / 41, abs=1e-6),
        "by_reason": {"too_small": 10, "uniform": 3},
    }
    last = report(gateway, "/v1/monitoring/refusals", days=1)["per_day"]
    assert last == [refusals["per_day"][-1]]

    # A baseline is frozen from predictions only.
    with gateway.client() as c:
        r = post(c, "/v1/monitoring/baseline", json={"min_records": N})
    assert r.status_code == 201 and r.json()["records"] == N
    histograms = report(gateway, "/v1/monitoring/baseline")["current"]["histograms"]
    assert sum(histograms["image_width"]["counts"]) == N
    assert histograms["image_width"]["counts"][1] == 0  # no 128-256 px refused copy


def test_monitoring_cli_refuses_bad_input_with_a_clear_error(tmp_path: Path) -> None:
    missing = monitoring_cli("--database-url", f"sqlite:///{tmp_path / 'nope.db'}", "show-baseline")
    assert missing.returncode == 2 and "no database at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # a typo creates no empty database
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Database(url).upgrade()
    shown = monitoring_cli("--database-url", url, "show-baseline")
    assert shown.returncode == 0 and FREEZE_COMMAND in shown.stdout
    empty = monitoring_cli("--database-url", url, "freeze-baseline")
    assert empty.returncode == 2 and "only 0 predictions" in empty.stderr
    assert "at least 200" in empty.stderr and "Traceback" not in empty.stderr
    both = monitoring_cli(
        "--database-url", url, "freeze-baseline", "--days", "1", "--since", "2026-01-01"
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr
    negative = monitoring_cli("--database-url", url, "freeze-baseline", "--days", "-1")
    assert negative.returncode == 2 and "--days must be positive" in negative.stderr


def prediction_row(pid: str) -> Prediction:
    return Prediction(
        id=pid, client_id="c1", request_id=None, request_fingerprint="f" * 64,
        model_name="skin_lesion", model_version="1", body_location="back", age=None,
        sex="unknown", image_sha256="0" * 64, image_format="jpeg", image_width=600,
        image_height=450, image_brightness=120.0, image_contrast=30.0, image_stored=False,
        probabilities={"nv": 1.0}, top_class="nv", refer=False, answer={"id": pid},
    )  # fmt: skip


def test_migration_0004_keeps_existing_rows(fresh_database: str) -> None:
    """A database at 0003 with predictions, feedback and refusals: 0004 adds the baselines and
    keeps every row; going back refuses while a baseline is on record."""
    db = Database(fresh_database)
    config = alembic_config()

    def migrate(action: str, target: str) -> None:
        with migrating(db.engine) as conn:
            config.attributes["connection"] = conn
            getattr(command, action)(config, target)

    def counts() -> dict[str, int]:
        with db.engine.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("predictions", "feedback", "feedback_events", "refusals")
            }

    migrate("upgrade", "0003")

    async def before() -> None:
        for pid in ("p1", "p2"):
            await db.run(crud.add_prediction, prediction_row(pid))
        await db.run(crud.record_feedback, "p1", "mel", "histo", "c1")

    asyncio.run(before())
    with db.engine.begin() as conn:
        conn.execute(
            Refusal.__table__.insert().values(
                id="r1", created_at=datetime.now(UTC), client_id="c1", request_fingerprint="f" * 64,
                reason="too_small", message="too small", mode="reject", answer={"code": "x"},
                image_stored=False,
            )
        )  # fmt: skip
    kept = counts()
    assert kept == {"predictions": 2, "feedback": 1, "feedback_events": 1, "refusals": 1}

    db.upgrade()
    assert counts() == kept
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with db.sessions.begin() as s:
        assert s.get(Feedback, "p1").diagnosis == "mel"
        rates = queries.refusal_rates(s, 2, datetime.now(UTC))
    assert (rates["total"]["predictions"], rates["total"]["refusals"]) == (2, 1)
    assert rates["total"]["by_reason"] == {"too_small": 1}
    done = monitoring_cli("--database-url", fresh_database, "freeze-baseline", "--min-records", "2")
    assert done.returncode == 0, done.stderr
    assert "froze capture baseline 1 " in done.stdout and "from 2 predictions" in done.stdout
    assert counts() == kept

    with pytest.raises(RuntimeError, match="holds 1 frozen baselines"):
        migrate("downgrade", "0003")
    with db.engine.connect() as conn:  # refused and rolled back: nothing lost
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert conn.execute(select(func.count()).select_from(CaptureBaseline)).scalar() == 1
    assert counts() == kept
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM capture_baselines"))
    migrate("downgrade", "0003")
    assert counts() == kept
    db.upgrade()
    assert counts() == kept
    db.dispose()
