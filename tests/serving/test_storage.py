"""Consented originals are stored content-addressed, atomically."""

from __future__ import annotations

import csv
from pathlib import Path

from serving.storage import store_image


def test_store_image_is_content_addressed(tmp_path: Path, real_lesions_dir: Path) -> None:
    with open(real_lesions_dir / "labels.csv") as f:
        row = next(csv.DictReader(f))
    path, sha = real_lesions_dir / f"{row['image_id']}.jpg", row["sha256"]
    data = path.read_bytes()
    stored = store_image(data, sha, "jpeg", tmp_path)
    assert stored == tmp_path / sha[:2] / f"{sha}.jpg" and stored.read_bytes() == data
    mtime = stored.stat().st_mtime_ns
    assert store_image(data, sha, "jpeg", tmp_path) == stored and stored.stat().st_mtime_ns == mtime
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary leftovers
