"""``metadata.json``'s ``explain``: the class activation map output ``cam__2`` of a version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.labels import NUM_CLASSES
from contracts.metadata import MetadataError, VersionMetadata, read_metadata
from contracts.tensors import CAM_OUTPUT_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME

EXPLAIN = {"output": CAM_OUTPUT_NAME, "method": "cam", "grid": [4, 5], "classes": NUM_CLASSES}
GATE = {"ood": {"score": "knn", "threshold": 0.5}}


def test_an_explained_version_has_the_map_third() -> None:
    meta = VersionMetadata("skin_lesion", (112, 150), explain=dict(EXPLAIN), gate=GATE)
    assert meta.has_cam_output and meta.cam_grid() == (4, 5)
    assert meta.output_names() == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME]
    outputs = meta.to_dict()["outputs"]
    assert outputs[-1] == {"name": CAM_OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 7, 4, 5]}
    plain = VersionMetadata("skin_lesion", (112, 150), explain=dict(EXPLAIN))
    assert plain.output_names() == [OUTPUT_NAME, CAM_OUTPUT_NAME]  # no score: a gap at 1


def test_explain_round_trips_and_older_versions_have_none(tmp_path: Path) -> None:
    meta = VersionMetadata("skin_lesion", (112, 150), explain={**EXPLAIN, "variant": "tta"})
    meta.write(tmp_path / "metadata.json")
    back = read_metadata(tmp_path)
    assert back.explain == {**EXPLAIN, "variant": "tta"} and back.to_dict() == meta.to_dict()
    raw = meta.to_dict()
    del raw["explain"]  # as written before the map existed
    older = VersionMetadata.from_dict(raw)
    assert older.explain is None and not older.has_cam_output
    assert older.output_names() == [OUTPUT_NAME]


def test_an_explain_of_another_output_is_no_map() -> None:
    future = {"output": "saliency__3", "method": "gradcam", "grid": [7, 7], "classes": 7}
    meta = VersionMetadata.from_dict({"input_size": [112, 150], "explain": future})
    assert not meta.has_cam_output and meta.output_names() == [OUTPUT_NAME]
    assert meta.explain == future  # kept, and written back


@pytest.mark.parametrize(
    "explain",
    [
        {**EXPLAIN, "grid": [4]},
        {**EXPLAIN, "grid": [0, 5]},
        {**EXPLAIN, "grid": [True, 5]},
        {**EXPLAIN, "grid": None},
        {**EXPLAIN, "classes": 6},
        "cam__2",
    ],
)
def test_a_broken_explain_names_the_file(tmp_path: Path, explain: Any) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"input_size": [112, 150], "explain": explain}))
    with pytest.raises(MetadataError, match=str(path)):
        read_metadata(path)
