"""The gateway and a fusion version: the form's age, sex and body site reach the model as its
second input (``clinical__1``, ``contracts.clinical``), the answer says which fields the model
read as unknown, a missing field is never an error, and a version whose encoding is not this
code's is refused with both encodings named. Real Triton, real gateway, real photos."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts import clinical
from contracts.images import eval_resize, read_image
from contracts.labels import CLASSES
from contracts.metadata import METADATA_FILE
from serving.triton.server import TritonServer
from tests.factories import fusion_version
from training.export import ProbabilityModel

pytestmark = [pytest.mark.triton, pytest.mark.slow]

SIZE = (48, 64)


@pytest.fixture(scope="module")
def fusion(
    real_lesions_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ProbabilityModel, Path]:
    return fusion_version(real_lesions_dir, tmp_path_factory.mktemp("fusion-repo"), SIZE)


@pytest.fixture(scope="module")
def fusion_triton(
    fusion: tuple[ProbabilityModel, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    _, version = fusion
    with TritonServer(version.parents[1], tmp_path_factory.mktemp("fusion-triton")) as server:
        yield server


def _upload(c: Any, photo: bytes, **fields: str) -> Any:
    return c.post(
        "/v1/predictions",
        data=fields,
        files={"image": ("a.jpg", photo, "image/jpeg")},
    )


def _probabilities(answer: dict[str, Any]) -> np.ndarray:
    """The model's probabilities (the forms here are on sites where no rule excludes)."""
    assert answer["excluded"] == []
    by_code = {r["code"]: r["probability"] for r in answer["ranking"]}
    return np.array([by_code[c] for c in CLASSES])


def test_the_form_reaches_the_model_and_the_answer_says_what_was_unknown(
    make_gateway: Any,
    fusion: tuple[ProbabilityModel, Path],
    fusion_triton: TritonServer,
    tmp_path: Path,
    real_lesions_dir: Path,
    lesion_rows: list,
) -> None:
    eager, version = fusion
    live = make_gateway(
        f"sqlite:///{tmp_path / 'c.db'}",
        fusion_triton.grpc_url,
        model_repository=version.parents[1],
    )
    path = real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg"
    photo = path.read_bytes()
    image = torch.from_numpy(eval_resize(read_image(str(path)), SIZE)[None])
    forms = [
        ({"age": "70", "sex": "male", "body_location": "back"}, []),
        ({"age": "35", "sex": "female", "body_location": "abdomen"}, []),  # no rule there
        ({"sex": "female", "body_location": "unknown"}, ["age", "site"]),  # age not sent
        ({"body_location": "unknown"}, ["age", "sex", "site"]),
    ]
    with live.client() as c:
        answers = []
        for form, unknown in forms:
            r = _upload(c, photo, **form)
            assert r.status_code == 201, r.text
            answer = r.json()
            assert answer["clinical"] == {
                "used": True,
                "encoding": clinical.ENCODING_VERSION,
                "unknown": unknown,
            }
            row = clinical.encode(form.get("age"), form.get("sex"), form.get("body_location"))
            with torch.no_grad():
                want = eager(image, torch.from_numpy(row[None])).numpy()[0]
            # the eager model's answer for THIS form (the answer rounds to 6 decimals)
            np.testing.assert_allclose(_probabilities(answer), want, atol=2e-5)
            answers.append(answer)
            stored = c.get(f"/v1/predictions/{answer['id']}").json()
            assert stored["clinical"] == answer["clinical"]  # kept with the record
    probabilities = [_probabilities(a) for a in answers]
    assert np.abs(probabilities[0] - probabilities[1]).max() > 1e-3  # the form matters
    assert np.abs(probabilities[0] - probabilities[3]).max() > 1e-3
    assert live.count() == len(forms)


def test_a_version_of_another_encoding_is_refused_naming_both(
    make_gateway: Any,
    fusion: tuple[ProbabilityModel, Path],
    fusion_triton: TritonServer,
    tmp_path: Path,
    real_lesions_dir: Path,
    lesion_rows: list,
) -> None:
    """The gateway reads a copy of the repository whose metadata.json names another encoding:
    the same numbers would mean other things, so it predicts nothing and says why."""
    _, version = fusion
    other = tmp_path / "other"
    shutil.copytree(version.parents[1], other, symlinks=True)
    path = other / version.parent.name / version.name / METADATA_FILE
    data = json.loads(path.read_text())
    data["clinical"]["version"] = "clinical-v0"
    path.unlink()
    path.write_text(json.dumps(data))
    live = make_gateway(
        f"sqlite:///{tmp_path / 'o.db'}", fusion_triton.grpc_url, model_repository=other
    )
    photo = (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()
    with live.client() as c:
        r = _upload(c, photo, age="70", sex="male", body_location="back")
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        detail = r.json()["detail"]
        assert "'clinical-v0'" in detail and f"'{clinical.ENCODING_VERSION}'" in detail
        ready = c.get("/readyz", params={"strict": "true"})
        assert ready.status_code == 503
        assert "'clinical-v0'" in ready.json()["checks"]["triton"]
    assert live.count() == 0


def test_an_image_only_version_says_it_did_not_use_the_form(
    make_gateway: Any,
    triton: Any,
    tmp_path: Path,
    real_lesions_dir: Path,
    lesion_rows: list,
) -> None:
    live = make_gateway(f"sqlite:///{tmp_path / 'i.db'}", triton.grpc_url)
    photo = (real_lesions_dir / f"{lesion_rows[0]['image_id']}.jpg").read_bytes()
    with live.client() as c:
        with_form = _upload(c, photo, age="70", sex="male", body_location="back")
        without = _upload(c, photo, body_location="back")
    assert with_form.status_code == without.status_code == 201, with_form.text
    assert with_form.json()["clinical"] == {"used": False, "encoding": None, "unknown": []}
    # the image alone decides: age and sex change nothing
    assert [r["probability"] for r in with_form.json()["ranking"]] == [
        r["probability"] for r in without.json()["ranking"]
    ]
