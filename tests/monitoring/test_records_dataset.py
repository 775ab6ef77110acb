"""The loop back to training: records of the real gateway -> a HAM10000-layout dataset that
training.data loads, validates and versions (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contracts.images import decode_image, read_image
from training import data

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.triton]


def records_dataset(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.records_dataset", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def with_alpha(jpeg: Path) -> bytes:
    """The photo as an RGBA PNG whose top-left quarter is half transparent."""
    rgba = np.asarray(Image.open(jpeg).convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, : rgba.shape[1] // 2, 3] = 128
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def gateway(make_gateway: Any, triton: Any, fresh_database: str) -> Any:
    """A gateway of the session's Triton on an empty database of each kind."""
    return make_gateway(fresh_database, triton.grpc_url)


def test_records_become_a_dataset_training_loads(
    gateway: Any, real_lesions_dir: Path, lesion_rows: list[dict], ham_dir: Path, tmp_path: Path
) -> None:
    database_url = gateway.settings.database_url
    image_dir = gateway.settings.image_dir
    rows = lesion_rows[::4]  # one photo of each class
    photo = {r["image_id"]: (real_lesions_dir / f"{r['image_id']}.jpg").read_bytes() for r in rows}

    def upload(c: Any, row: dict, data: bytes, consent: bool, name: str = "x.jpg") -> str:
        fields = {"body_location": row["localization"], "sex": row["sex"], "age": row["age"]}
        r = c.post(
            "/v1/predictions",
            data={**fields, "consent_to_store_image": str(consent).lower()},
            files={"image": (name, data, "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def feedback(c: Any, pid: str, dx: str, how: str = "histo") -> None:
        r = c.post(f"/v1/predictions/{pid}/feedback", json={"diagnosis": dx, "confirmation": how})
        assert r.status_code == 201, r.text

    expected: dict[str, dict] = {}  # sha256 -> the row the dataset must hold
    with gateway.client() as c:
        for row in rows[:4]:  # consented, confirmed
            pid = upload(c, row, photo[row["image_id"]], consent=True)
            feedback(c, pid, row["dx"], row["dx_type"])
            expected[row["image_id"]] = {"lesion_id": pid, "dx": row["dx"], "row": row}
        # The first photo again, consented; its newer feedback (changed once) wins.
        again = rows[0]
        pid = upload(c, again, photo[again["image_id"]], consent=True)
        feedback(c, pid, "nv", "follow_up")
        feedback(c, pid, "bkl", "consensus")
        expected[again["image_id"]] = {"lesion_id": pid, "dx": "bkl", "row": again}
        upload(c, rows[4], photo[rows[4]["image_id"]], consent=True)  # no feedback: out
        feedback(c, upload(c, rows[5], photo[rows[5]["image_id"]], consent=False), "mel")  # out
        png = with_alpha(real_lesions_dir / f"{rows[6]['image_id']}.jpg")
        pid = upload(c, rows[6], png, consent=True, name="x.png")
        feedback(c, pid, rows[6]["dx"], "confocal")
        expected["png"] = {"lesion_id": pid, "dx": rows[6]["dx"], "row": rows[6]}

    out = tmp_path / "clinic"
    done = records_dataset(
        "--database-url", database_url, "--image-dir", str(image_dir), "--out", str(out),
        "--merge-with", str(ham_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 5 images" in done.stdout

    table = pd.read_csv(out / data.METADATA_FILE)
    assert list(table.columns) == [
        "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"
    ]  # fmt: skip
    by_lesion = table.set_index("lesion_id")
    assert set(by_lesion.index) == {e["lesion_id"] for e in expected.values()}
    for key, e in expected.items():
        got, row = by_lesion.loc[e["lesion_id"]], e["row"]
        assert got["dx"] == e["dx"]
        assert (got["age"], got["sex"], got["localization"]) == (
            float(row["age"]),
            row["sex"],
            row["localization"],
        )
        if key != "png":
            stored = (out / "images" / f"{got['image_id']}.jpg").read_bytes()
            assert stored == photo[row["image_id"]]  # the uploaded bytes, untouched
    assert by_lesion.loc[expected[rows[0]["image_id"]]["lesion_id"], "dx_type"] == "consensus"

    # PNG: the pixels the gateway fed the model (transparency on white), losslessly.
    png_id = by_lesion.loc[expected["png"]["lesion_id"], "image_id"]
    written = read_image(str(out / "images" / f"{png_id}.png"))
    assert np.array_equal(written, decode_image(png, 10**9).rgb)

    frame = data.validate(data.load_ham10000(out), str(out), decode=True)
    assert len(frame) == 5 and frame["image_id"].is_unique
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["dataset_version"] == data.dataset_version(frame)
    assert summary["images"] == 5

    combined = data.validate(data.load_csv(out / "combined.csv"), "combined")
    ham = data.load_ham10000(ham_dir)
    assert len(combined) == len(ham) + 5
    assert set(frame["image_id"]) <= set(combined["image_id"])
    assert summary["combined"]["dataset_version"] == data.dataset_version(combined)


def test_records_dataset_refuses_bad_input_with_a_clear_error(tmp_path: Path) -> None:
    empty_db = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "images").mkdir()
    done = records_dataset(
        "--database-url", empty_db, "--image-dir", str(tmp_path / "images"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot read the gateway's records" in done.stderr and "Traceback" not in done.stderr

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    done = records_dataset(
        "--database-url", empty_db, "--image-dir", str(tmp_path / "images"), "--out", str(taken)
    )
    assert done.returncode == 2 and "exists and is not empty" in done.stderr

    done = records_dataset(
        "--database-url",
        empty_db,
        "--image-dir",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and "SKIN_IMAGE_DIR" in done.stderr


def test_no_confirmed_consented_photo_is_an_error(
    make_gateway: Any, triton: Any, real_lesions_dir: Path, lesion_rows: list[dict], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'few.db'}"
    gateway = make_gateway(url, triton.grpc_url)
    row = lesion_rows[0]
    with gateway.client() as c:
        r = c.post(
            "/v1/predictions",
            data={"body_location": row["localization"], "consent_to_store_image": "true"},
            files={"image": ("x.jpg", (real_lesions_dir / f"{row['image_id']}.jpg").read_bytes())},
        )
        assert r.status_code == 201
    done = records_dataset(
        "--database-url", url, "--image-dir", str(gateway.settings.image_dir),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 2 and "nothing to build" in done.stderr
    assert not (tmp_path / "out").exists()
