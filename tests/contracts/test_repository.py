"""The model repository's versions: which one is served, its history, promote, rollback, delete.

Plain files only (a ``model.pt`` placeholder is enough to count as a version): no torch here;
tests/triton drives the same functions through the CLI against exported models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.labels import NUM_CLASSES
from contracts.repository import (
    HISTORY_FILE,
    VersionError,
    delete,
    history,
    list_versions,
    model_dirs,
    promote,
    rollback,
    served_stack,
    served_version,
    versions,
)
from contracts.tensors import OOD_OUTPUT_NAME, OUTPUT_NAME
from contracts.triton_config import CONFIG_FILE, production_config, read_config, write_config


def add_version(model_dir: Path, version: int, **meta: object) -> None:
    folder = model_dir / str(version)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"placeholder")
    (folder / "metadata.json").write_text(json.dumps({"input_size": [64, 64], **meta}))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Versions 1, 2 and 3, version 1 served, as a first export leaves it."""
    folder = tmp_path / "repo" / "skin_lesion"
    for v in (1, 2, 3):
        metrics = {"val/balanced_accuracy": v / 10}
        add_version(folder, v, created_at=f"2026-01-0{v}", metrics=metrics)
    write_config(folder / CONFIG_FILE, production_config("skin_lesion", (64, 64), NUM_CLASSES, 1))
    (folder / HISTORY_FILE).write_text(json.dumps({"action": "first_export", "version": 1}) + "\n")
    return folder


def test_versions_are_the_complete_numbered_folders(model_dir: Path) -> None:
    (model_dir / "4").mkdir()  # being written: no model.pt yet
    (model_dir / "notes").mkdir()
    (model_dir / "notes" / "model.pt").write_bytes(b"")
    assert versions(model_dir) == [1, 2, 3]
    other = model_dir.parent / "other"
    other.mkdir()
    assert model_dirs(model_dir.parent) == [model_dir]  # a folder without config.pbtxt is none


def test_promote_serves_the_version_and_records_it(model_dir: Path) -> None:
    assert served_version(model_dir) == 1
    assert promote(model_dir, 3) == 1
    assert served_version(model_dir) == 3
    assert promote(model_dir, 3) == 3  # already served: nothing changes, nothing recorded
    events = history(model_dir)
    assert [(e["action"], e["version"], e.get("previous")) for e in events] == [
        ("first_export", 1, None),
        ("promote", 3, 1),
    ]
    with pytest.raises(VersionError, match=r"has no version 9; versions: 1, 2, 3"):
        promote(model_dir, 9)


def test_rollback_returns_to_the_version_served_before(model_dir: Path) -> None:
    promote(model_dir, 2)
    promote(model_dir, 3)
    assert rollback(model_dir) == (3, 2)
    assert served_version(model_dir) == 2
    assert rollback(model_dir) == (2, 1)
    with pytest.raises(VersionError, match="no earlier served version"):
        rollback(model_dir)
    assert served_stack(history(model_dir)) == [1]


def test_the_config_lists_the_outputs_of_the_served_version(model_dir: Path) -> None:
    """A gated version (``gate.ood`` in its metadata.json) returns a score besides the
    probabilities; Triton's config must say so while it is served, and not after a rollback."""
    add_version(model_dir, 4, gate={"ood": {"score": "msp", "threshold": -0.2}})

    def outputs() -> list[tuple[str, list[int]]]:
        return [(t.name, list(t.dims)) for t in read_config(model_dir / CONFIG_FILE).output]

    plain = [(OUTPUT_NAME, [NUM_CLASSES])]
    assert outputs() == plain
    promote(model_dir, 4)
    assert outputs() == [*plain, (OOD_OUTPUT_NAME, [1])]
    assert rollback(model_dir) == (4, 1)
    assert outputs() == plain
    assert read_config(model_dir / CONFIG_FILE).output[0].label_filename == "labels.txt"


def test_a_version_without_readable_metadata_is_not_served(model_dir: Path) -> None:
    (model_dir / "2" / "metadata.json").write_text("{not json")
    with pytest.raises(VersionError, match=r"version 2 of skin_lesion cannot be served: cannot"):
        promote(model_dir, 2)
    assert served_version(model_dir) == 1
    assert [e["action"] for e in history(model_dir)] == ["first_export"]


def test_rollback_refuses_a_deleted_version(model_dir: Path) -> None:
    promote(model_dir, 2)
    promote(model_dir, 1)
    delete(model_dir, 2)
    with pytest.raises(VersionError, match="version 2, served before 1, has been deleted"):
        rollback(model_dir)


def test_delete_refuses_the_served_version_and_leaves_no_trash(model_dir: Path) -> None:
    with pytest.raises(VersionError, match="is the served one and cannot be deleted"):
        delete(model_dir, 1)
    delete(model_dir, 2)
    assert versions(model_dir) == [1, 3]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".deleted-")]
    assert history(model_dir)[-1]["action"] == "delete"
    with pytest.raises(VersionError, match="has no version 2"):
        delete(model_dir, 2)


def test_served_stack_replays_promotions_and_rollbacks() -> None:
    events = [
        {"action": "first_export", "version": 1},
        {"action": "promote", "version": 2},
        {"action": "promote", "version": 3},
        {"action": "rollback", "version": 2},
        {"action": "delete", "version": 3},
        {"action": "rollback", "version": 1},
        {"action": "rollback", "version": 1},
        {"action": "rollback", "version": 1},  # nothing left to pop: ignored
    ]
    assert served_stack(events) == []
    assert served_stack(events[:4]) == [1, 2]


def test_without_a_config_nothing_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    add_version(folder, 1)
    assert served_version(folder) is None
    assert history(folder) == []


def test_list_versions_reads_each_metadata(model_dir: Path) -> None:
    (model_dir / "2" / "metadata.json").write_text("{not json")
    listed = list_versions(model_dir)
    assert [(i.version, i.served) for i in listed] == [(1, True), (2, False), (3, False)]
    assert listed[0].created_at == "2026-01-01" and listed[0].balanced_accuracy == 0.1
    # An unreadable metadata.json lists the version with blanks rather than failing.
    assert listed[1].created_at == "" and listed[1].balanced_accuracy is None
