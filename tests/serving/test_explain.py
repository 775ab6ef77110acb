"""Where the model looked, the gateway's side: the maps made readable, the overlay, and the
answers with explain=true (a version without maps: a note, never an error)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from contracts.labels import CLASS_INDEX, CLASSES
from contracts.metadata import METADATA_FILE, read_metadata
from serving import explain


def test_maps_are_scaled_by_their_own_range_whatever_the_bias() -> None:
    cams = np.zeros((7, 3, 4), np.float32)
    cams[CLASS_INDEX["mel"]] = [[-6, -4, -4, -2], [-4, -4, -4, 2], [-4, -4, -4, -4]]
    cams[CLASS_INDEX["nv"]] = -1.0  # flat: all zeros, no division by zero
    cams[CLASS_INDEX["bkl"]] = cams[CLASS_INDEX["mel"]] - 50.0  # another bias: the same map
    ranking = [("mel", 0.6), ("nv", 0.3), ("bkl", 0.1)]
    out = explain.explanation(cams, ranking)
    assert out["available"] and out["grid"] == [3, 4] and out["method"] == "cam"
    assert [m["code"] for m in out["maps"]] == ["mel", "nv", "bkl"]  # the ranking's top 3
    mel = np.array(out["maps"][0]["map"])
    assert mel.max() == 1.0 and mel.min() == 0.0 and mel[1, 3] == 1.0 and mel[0, 0] == 0.0
    assert mel[0, 3] == 0.5  # (-2 - -6) / (2 - -6)
    assert np.array(out["maps"][1]["map"]).max() == 0.0
    assert out["maps"][2]["map"] == out["maps"][0]["map"]  # a bias moves nothing
    with pytest.raises(ValueError, match="expected \\[7, h, w\\]"):
        explain.explanation(np.zeros((5, 3, 4)), ranking)


def test_overlay_lays_the_hot_cell_where_it_is() -> None:
    rgb = np.full((90, 120, 3), 128, np.uint8)
    grid = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # hot: top-left
    out = explain.overlay(rgb, grid)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    top_left, bottom_right = out[5, 5].astype(int), out[85, 115].astype(int)
    assert top_left[0] > top_left[2]  # red over the hot cell
    assert bottom_right[2] > bottom_right[0]  # blue where the map is 0
    assert explain.png(out).startswith(b"\x89PNG")


def _upload(c: Any, photo: bytes, **fields: str) -> Any:
    return c.post(
        "/v1/predictions",
        data={"body_location": "back", **fields},
        files={"image": ("a.jpg", photo, "image/jpeg")},
    )


@pytest.mark.triton
@pytest.mark.slow
def test_explain_answers_the_maps_and_draws_them_on_a_kept_photo(
    make_gateway: Any,
    triton: Any,
    model_repository: Path,
    tmp_path: Path,
    real_lesions_dir: Path,
    lesion_rows: list,
) -> None:
    live = make_gateway(f"sqlite:///{tmp_path / 'ex.db'}", triton.grpc_url)
    photo = (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()
    with live.client() as c:
        kept = _upload(c, photo, explain="true", consent_to_store_image="true")
        assert kept.status_code == 201, kept.text
        answer = kept.json()
        version = answer["model"]["version"]
        meta = read_metadata(model_repository / "skin_lesion" / version / METADATA_FILE)
        out = answer["explanation"]
        assert out["available"] and out["grid"] == list(meta.cam_grid())
        assert [m["code"] for m in out["maps"]] == [r["code"] for r in answer["ranking"][:3]]
        for m in out["maps"]:
            grid = np.array(m["map"])
            assert grid.shape == tuple(out["grid"])
            assert grid.min() == 0.0 and grid.max() == 1.0  # each scaled by its own range
        stored = c.get(f"/v1/predictions/{answer['id']}").json()
        assert stored["explanation"] == out  # kept with the answer: numbers, no pixels
        png = c.get(f"/v1/predictions/{answer['id']}/overlay.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        drawn = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
        assert drawn.shape[:2] == (answer["image"]["height"], answer["image"]["width"])
        second = out["maps"][1]["code"]
        assert c.get(f"/v1/predictions/{answer['id']}/overlay.png?code={second}").status_code == 200
        absent = next(code for code in CLASSES if code not in {m["code"] for m in out["maps"]})
        missing = c.get(f"/v1/predictions/{answer['id']}/overlay.png?code={absent}")
        assert missing.status_code == 404 and "no map for" in missing.json()["detail"]
        private = _upload(c, photo, explain="true")  # no consent: the photo is not kept
        assert private.json()["explanation"]["available"]
        refused = c.get(f"/v1/predictions/{private.json()['id']}/overlay.png")
        assert refused.status_code == 409
        assert refused.json()["type"] == "/problems/photo-not-kept"


@pytest.mark.triton
@pytest.mark.slow
def test_explain_on_a_version_without_maps_answers_with_a_note(
    make_gateway: Any,
    triton: Any,
    model_repository: Path,
    tmp_path: Path,
    real_lesions_dir: Path,
    lesion_rows: list,
) -> None:
    """The gateway reads a copy of the repository whose metadata.json has no ``explain``, as
    a version exported before the maps: it must not ask Triton for them."""
    old = tmp_path / "old"
    shutil.copytree(model_repository, old, symlinks=True)
    for path in old.glob("skin_lesion/*/" + METADATA_FILE):
        data = json.loads(path.read_text())
        data.pop("explain", None)
        path.unlink()
        path.write_text(json.dumps(data))
    live = make_gateway(f"sqlite:///{tmp_path / 'ex.db'}", triton.grpc_url, model_repository=old)
    photo = (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()
    with live.client() as c:
        asked = _upload(c, photo, explain="true", consent_to_store_image="true")
        plain = _upload(c, photo)
        assert asked.status_code == plain.status_code == 201, asked.text
        note = asked.json()["explanation"]
        assert note["available"] is False and note["maps"] == []
        assert f"version {asked.json()['model']['version']} has no" in note["note"]
        assert [r["code"] for r in asked.json()["ranking"]] == [
            r["code"] for r in plain.json()["ranking"]
        ]
        assert plain.json()["explanation"] is None
        overlay = c.get(f"/v1/predictions/{asked.json()['id']}/overlay.png")
        assert overlay.status_code == 404 and "has no map" in overlay.json()["detail"]
