"""metadata.json: the typed schema, its writer and reader, and the errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contracts.images import RESIZE_POLICY
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.metadata import (
    METADATA_FILE,
    MetadataError,
    VersionMetadata,
    jsonable,
    read_metadata,
)
from contracts.tensors import INPUT_DATATYPE, INPUT_NAME, OUTPUT_DATATYPE, OUTPUT_NAME


def full() -> VersionMetadata:
    return VersionMetadata(
        name="skin_lesion",
        input_size=(112, 150),
        version=3,
        dataset_version="ab" * 32,
        synthetic=False,
        model_name="compact_cnn",
        training_config={"model_name": "compact_cnn", "lr": 0.001},
        class_weights=[1.0] * NUM_CLASSES,
        metrics={"val/balanced_accuracy": 0.61},
        thresholds={
            "mel": {"threshold": 0.2, "sensitivity": 0.95},
            "malignant": {"threshold": 0.3},
        },
        temperature=1.4,
        wandb_run_id="run-1",
        created_at="2026-01-01T00:00:00+00:00",
        parity={"max_abs_diff": 1e-7, "tolerance": 1e-5, "images": 28},
        reference={"features": {}},
        extra={"tta": {"ops": ["identity", "hflip"]}, "future_key": [1, 2]},
    )


def test_to_dict_derives_the_tensor_description_from_the_input_size() -> None:
    raw = full().to_dict()
    assert raw["input_size"] == [112, 150] and raw["classes"] == list(CLASSES)
    assert raw["inputs"] == [
        {"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, 112, 150, 3]}
    ]
    assert raw["outputs"] == [
        {"name": OUTPUT_NAME, "datatype": OUTPUT_DATATYPE, "shape": [-1, NUM_CLASSES]}
    ]
    assert raw["resize_policy"] == RESIZE_POLICY
    # Extra keys sit beside the known ones, at the top level, as a newer writer put them.
    assert raw["tta"] == {"ops": ["identity", "hflip"]} and raw["future_key"] == [1, 2]
    assert "extra" not in raw
    json.dumps(raw, allow_nan=False)  # plain JSON


def test_dict_round_trip_keeps_every_field_and_unknown_keys() -> None:
    meta = full()
    back = VersionMetadata.from_dict(meta.to_dict())
    assert back == meta
    assert back.extra == {"tta": {"ops": ["identity", "hflip"]}, "future_key": [1, 2]}


def test_write_and_read_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    folder = tmp_path / "3"
    folder.mkdir()
    full().write(folder / METADATA_FILE)
    assert [p.name for p in folder.iterdir()] == [METADATA_FILE]  # no temporary left over
    # Both the file and its version folder can be read.
    assert read_metadata(folder / METADATA_FILE) == full() == read_metadata(folder)
    # A key this release does not know survives a read and a write by it.
    raw = json.loads((folder / METADATA_FILE).read_text())
    raw["added_by_a_newer_release"] = {"x": 1}
    (folder / METADATA_FILE).write_text(json.dumps(raw))
    read_metadata(folder).write(folder / METADATA_FILE)
    assert json.loads((folder / METADATA_FILE).read_text())["added_by_a_newer_release"] == {"x": 1}


def test_derived_keys_are_not_read_back_as_truth() -> None:
    raw = full().to_dict()
    raw["inputs"] = [{"name": "stale", "shape": [1]}]
    raw["resize_policy"] = "something older"
    meta = VersionMetadata.from_dict(raw)
    assert "inputs" not in meta.extra and "resize_policy" not in meta.extra
    assert meta.to_dict()["inputs"][0]["name"] == INPUT_NAME
    assert meta.to_dict()["resize_policy"] == RESIZE_POLICY


def test_minimal_metadata_gets_the_defaults() -> None:
    meta = VersionMetadata.from_dict({"input_size": [64, 64]})
    assert meta.name == "" and meta.classes == CLASSES and meta.temperature == 1.0
    assert meta.thresholds == {} and meta.extra == {} and meta.version is None
    # None is "not recorded": the default, not a None where a dict is expected.
    assert VersionMetadata.from_dict({"input_size": [64, 64], "metrics": None}).metrics == {}


def test_wrong_class_order_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / METADATA_FILE
    path.write_text(json.dumps({"input_size": [64, 64], "classes": list(reversed(CLASSES))}))
    with pytest.raises(MetadataError, match="incompatible release") as e:
        read_metadata(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "size", [None, [64], [64, 64, 3], [0, 64], [-1, 64], [64.0, 64], ["64", "64"], "64x64"]
)
def test_missing_or_bad_input_size_names_the_file(tmp_path: Path, size: object) -> None:
    path = tmp_path / METADATA_FILE
    raw = {"name": "skin_lesion"} if size is None else {"input_size": size}
    path.write_text(json.dumps(raw))
    with pytest.raises(MetadataError, match="no usable input_size") as e:
        read_metadata(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text", ["[]", '"metadata"', "3", "null"])
def test_a_json_value_that_is_not_an_object_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / METADATA_FILE
    path.write_text(text)
    with pytest.raises(MetadataError, match="is not a JSON object") as e:
        read_metadata(path)
    assert str(path) in str(e.value)


def test_thresholds_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / METADATA_FILE
    path.write_text(json.dumps({"input_size": [64, 64], "thresholds": [0.3]}))
    with pytest.raises(MetadataError, match="thresholds must be an object") as e:
        read_metadata(path)
    assert str(path) in str(e.value)


def test_missing_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="does not exist") as e:
        read_metadata(tmp_path / "7")  # a version folder that is not there
    assert str(tmp_path / "7") in str(e.value)
    (tmp_path / "8").mkdir()
    with pytest.raises(MetadataError, match="does not exist") as e:
        read_metadata(tmp_path / "8")  # a folder without its metadata.json
    assert str(tmp_path / "8" / METADATA_FILE) in str(e.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"input_size": [64, 64],')
    with pytest.raises(MetadataError, match="cannot read") as e:
        read_metadata(broken)
    assert str(broken) in str(e.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MetadataError, match="cannot read") as e:
        read_metadata(binary)
    assert str(binary) in str(e.value)


def test_referral_thresholds_keep_only_valid_values() -> None:
    meta = VersionMetadata(
        name="m",
        input_size=(64, 64),
        thresholds={"mel": {"threshold": 0.25, "sensitivity": 0.95}, "malignant": 0.4},
    )
    assert meta.referral_thresholds() == {"mel": 0.25, "malignant": 0.4}
    # Out of (0, 1], not a number, or no threshold in the entry: that target has none.
    for bad in (0, -0.1, 1.5, float("nan"), "0.3", None, [0.3], {"sensitivity": 0.9}):
        thresholds = {"mel": {"threshold": bad}, "malignant": bad, "other": 0.5}
        meta = VersionMetadata(name="m", input_size=(64, 64), thresholds=thresholds)
        assert meta.referral_thresholds() == {}, bad  # "other" is not a referral target
    edge = VersionMetadata(name="m", input_size=(64, 64), thresholds={"mel": {"threshold": 1}})
    assert edge.referral_thresholds() == {"mel": 1.0}


def test_jsonable_makes_plain_json() -> None:
    value = {
        1: (1, 2),
        "array": np.arange(3, dtype=np.int64),
        "scalar": np.float32(0.5),
        "nan": float("nan"),
        "inf": float("-inf"),
        "path": Path("/x"),
        "nested": [{"t": (np.int64(4),)}],
        "plain": [True, None, "s", 1.5],
    }
    assert jsonable(value) == {
        "1": [1, 2],
        "array": [0, 1, 2],
        "scalar": 0.5,
        "nan": None,
        "inf": None,
        "path": "/x",
        "nested": [{"t": [4]}],
        "plain": [True, None, "s", 1.5],
    }
