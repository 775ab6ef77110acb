"""Reading both layouts, validation errors and the dataset version, on copies of real images."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest

from contracts.errors import DataError
from training import data


def _write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ham10000_layout_finds_images_in_both_part_folders(small_ham):
    root, rows = small_ham
    df = data.load_ham10000(root)
    assert list(df.columns) == list(data.COLUMNS)
    assert len(df) == len(rows)
    real = {r["image_id"]: r for r in rows}
    for row in df.itertuples():
        assert Path(row.path).name == f"{row.image_id}.jpg" and Path(row.path).is_file()
        assert row.label == real[row.image_id]["dx"]
        assert row.group == real[row.image_id]["lesion_id"]
        assert row.site == real[row.image_id]["localization"]
        assert row.dx_type == real[row.image_id]["dx_type"]
    assert {Path(p).parent.name for p in df["path"]} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }
    assert df["date"].isna().all()  # HAM10000 has no dates
    assert data.validate(df, "ham") is df


def test_generic_csv_relative_and_absolute_paths_and_aliases(small_ham, tmp_path):
    root, _rows = small_ham
    images = sorted(root.glob("*/*.jpg"))[:3]
    clinic = tmp_path / "clinic"
    (clinic / "photos").mkdir(parents=True)
    shutil.copy(images[0], clinic / "photos" / "a.jpg")
    csv_path = _write_csv(
        clinic / "labels.csv",
        [
            {"path": "photos/a.jpg", "dx": "MEL ", "localization": "Back", "date": "2021-03-04"},
            {"path": str(images[1]), "dx": "nv", "localization": "elbow", "date": "not a date"},
            {"path": str(images[2]), "dx": "bcc", "localization": "", "date": ""},
        ],
    )
    df = data.load_csv(csv_path)
    assert list(df.columns) == list(data.COLUMNS)
    assert df["path"].tolist() == [str(clinic / "photos" / "a.jpg"), str(images[1]), str(images[2])]
    assert df["image_id"].tolist() == ["a", images[1].stem, images[2].stem]
    assert df["label"].tolist() == ["mel", "nv", "bcc"]
    assert df["group"].tolist() == df["image_id"].tolist()  # no group column: one image each
    assert df["site"].tolist() == ["back", "unknown", "unknown"]  # 'elbow' is not a site
    assert df["date"].iloc[0] == pd.Timestamp("2021-03-04") and df["date"].iloc[1:].isna().all()
    assert data.validate(df, str(csv_path)) is df


def test_missing_data_folder_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"does not exist: point HAM10000_DIR"):
        data.load_ham10000(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"has no HAM10000_metadata.csv"):
        data.load_ham10000(tmp_path)


def test_csv_without_needed_columns_names_them(tmp_path):
    csv_path = _write_csv(tmp_path / "x.csv", [{"file": "a.jpg", "diagnosis": "mel"}])
    with pytest.raises(DataError) as err:
        data.load_csv(csv_path)
    message = str(err.value)
    assert "x.csv lacks the column(s) path, label" in message
    assert "found: file, diagnosis" in message


def test_truncated_jpeg_strict_and_skipped(small_ham, caplog):
    root, _ = small_ham
    df = data.load_ham10000(root)
    victim = Path(df["path"].iloc[2])
    victim.write_bytes(victim.read_bytes()[:-200])  # a cut-off download
    with pytest.raises(DataError) as err:
        data.validate(df, "ham")
    message = str(err.value)
    assert f"1 unreadable image (first: {victim} (truncated JPEG" in message
    assert "strict=False" in message
    with caplog.at_level(logging.WARNING):
        kept = data.validate(df, "ham", strict=False)
    assert len(kept) == len(df) - 1 and str(victim) not in set(kept["path"])
    assert kept.attrs["skipped"] == {"unreadable image": 1}
    assert "skipped 1 of" in caplog.text


def test_unreadable_files_each_get_a_reason(small_ham, tmp_path):
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), cv2.imread(str(next(small_ham[0].glob("*/*.jpg")))))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:-12])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(500) + b"\xff\xd9")
    reason = {p.name: data.check_image(str(p)) for p in tmp_path.iterdir()}
    assert reason == {
        "good.png": None,
        "empty.jpg": "empty file",
        "text.jpg": "not a JPEG or PNG",
        "cut.png": "truncated PNG (no IEND chunk)",
        "garbage.jpg": None,  # looks like a JPEG from outside...
    }
    assert data.check_image(str(tmp_path / "garbage.jpg"), decode=True) == "cannot be decoded"
    assert data.check_image(str(tmp_path / "absent.jpg")) == "missing"


def test_unknown_labels_first_five_and_count(small_ham):
    root, _ = small_ham
    df = data.load_ham10000(root)
    df.loc[:7, "label"] = "melanoma"
    with pytest.raises(DataError) as err:
        data.validate(df, "ham")
    message = str(err.value)
    assert "8 unknown labels (first: " in message
    named = message.split("(first: ")[1].split("):")[0]
    assert named.count("'melanoma'") == 5
    assert "labels must be one of akiec, bcc, bkl, df, mel, nv, vasc" in message


def test_missing_images_and_duplicate_ids(small_ham):
    root, _ = small_ham
    df = data.load_ham10000(root)
    os.remove(df["path"].iloc[0])
    df = data.load_ham10000(root)  # re-index: the file is gone
    doubled = pd.concat([df, df.iloc[[3]]], ignore_index=True)
    with pytest.raises(DataError) as err:
        data.validate(doubled, "ham")
    message = str(err.value)
    assert f"1 missing image (first: {df['image_id'].iloc[0]})" in message
    assert f"1 duplicate image_id (first: {df['image_id'].iloc[3]})" in message
    kept = data.validate(doubled, "ham", strict=False)
    assert len(kept) == len(df) - 1 and kept["image_id"].is_unique


def test_nothing_left_after_skipping_is_an_error(small_ham):
    df = data.load_ham10000(small_ham[0])
    df["label"] = "cat"
    with pytest.raises(DataError, match="no usable rows left"):
        data.validate(df, "ham", strict=False)


def test_dataset_version_follows_labels_and_bytes_not_order(small_ham, tmp_path):
    cache = tmp_path / "cache"
    df = data.load_ham10000(small_ham[0])
    version = data.dataset_version(df, cache)
    assert len(version) == 64 and int(version, 16) >= 0
    assert data.dataset_version(df.iloc[::-1].reset_index(drop=True), cache) == version

    relabelled = df.copy()
    relabelled.loc[0, "label"] = "bcc" if df.loc[0, "label"] != "bcc" else "mel"
    assert data.dataset_version(relabelled, cache) != version

    path = Path(df["path"].iloc[5])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one image
    path.write_bytes(bytes(raw))
    assert data.dataset_version(df, cache) != version
    assert data.dataset_version(df, tmp_path / "fresh_cache") == data.dataset_version(df, cache)


def test_dataset_version_uses_the_hash_cache(small_ham, tmp_path):
    cache = tmp_path / "cache"
    df = data.load_ham10000(small_ham[0])
    version = data.dataset_version(df, cache)
    entries = pd.read_json(cache / "file_hashes.json", orient="index")
    assert len(entries) == len(df)
    # Same size and mtime, so the cached hash is trusted: a forged entry changes the version.
    forged = (cache / "file_hashes.json").read_text().replace(entries.iloc[0, 2], "0" * 64)
    (cache / "file_hashes.json").write_text(forged)
    assert data.dataset_version(df, cache) != version
