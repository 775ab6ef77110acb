"""``python -m tools.records_dataset``: the clinic's own photos, as a training set.

    python -m tools.records_dataset --database-url URL --image-dir DIR --out OUT \
        [--merge-with HAM10000_DIR]

Reads the gateway's records: predictions whose photo was stored with consent and that have
a confirmed diagnosis (the latest feedback). Writes them in HAM10000's layout:
``OUT/HAM10000_metadata.csv`` (``lesion_id`` = the prediction id, ``image_id``, ``dx``,
``dx_type`` = how it was confirmed, ``age``, ``sex``, ``localization``) and
``OUT/images/<image_id>.jpg`` (the uploaded bytes; PNG uploads stay PNG, decoded as the
gateway decodes them), plus ``OUT/dataset.json`` with the dataset's version
(``training.data.dataset_version``). The folder is validated before it is published.

A photo uploaded several times is one image: the latest feedback of its consented uploads
decides its label. ``--merge-with`` also writes ``OUT/combined.csv``: HAM10000 and these
photos in one clinic CSV (absolute paths), for ``python -m training fit
--data.csv_path OUT/combined.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from contracts.errors import ConfigError, DataError
from contracts.images import decode_image
from serving.db.engine import make_engine
from serving.db.tables import Feedback, Prediction
from training import data

log = logging.getLogger(__name__)
PREFIX = "clinic_"


def read_records(database_url: str) -> pd.DataFrame:
    """Consented predictions with a confirmed diagnosis, latest feedback first."""
    query = (
        select(
            Prediction.id.label("prediction_id"),
            Prediction.image_sha256.label("sha256"),
            Prediction.image_format.label("format"),
            Prediction.body_location,
            Prediction.age,
            Prediction.sex,
            Feedback.diagnosis,
            Feedback.confirmation,
            Feedback.updated_at,
        )
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(Prediction.image_stored.is_(True))
        .order_by(Feedback.updated_at.desc(), Prediction.id)
    )
    try:
        engine = make_engine(database_url)
    except ArgumentError as exc:
        raise ConfigError(
            f"--database-url {database_url!r} is not a SQLAlchemy URL: {exc}"
        ) from None
    try:
        with engine.connect() as conn:
            return pd.DataFrame(
                conn.execute(query).mappings().all(), columns=query.selected_columns.keys()
            )
    except SQLAlchemyError as exc:
        first = str(exc.orig if hasattr(exc, "orig") else exc).splitlines()[0]
        raise DataError(
            f"cannot read the gateway's records ({type(exc).__name__}: {first}): pass the "
            "gateway's database (its SKIN_DATABASE_URL), migrated by a gateway start"
        ) from None
    finally:
        engine.dispose()


def _copy_image(source: Path, fmt: str, target_stem: Path) -> Path:
    """JPEG: the uploaded bytes. PNG: decoded as the gateway decodes it (alpha on white,
    16-bit to 8), written as 8-bit RGB PNG, so training sees the pixels the model saw."""
    if fmt == "jpeg":
        target = target_stem.with_suffix(".jpg")
        shutil.copyfile(source, target)
        return target
    target = target_stem.with_suffix(".png")
    decoded = decode_image(source.read_bytes(), max_pixels=2**31)
    Image.fromarray(decoded.rgb).save(target, "PNG")
    return target


def build(
    database_url: str,
    image_dir: str | Path,
    out: str | Path,
    merge_with: str | Path | None = None,
) -> dict[str, Any]:
    """Write the dataset (see the module doc) and return what ``dataset.json`` says.

    Raises:
        ConfigError: ``out`` exists and is not empty, or ``image_dir`` is not a folder.
        DataError: unreadable database, or no consented image with a confirmed diagnosis.
    """
    out, image_dir = Path(out), Path(image_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty: pass a new folder")
    if not image_dir.is_dir():
        raise ConfigError(
            f"--image-dir {image_dir} is not a folder: pass the gateway's SKIN_IMAGE_DIR"
        )
    # Checked first, so a bad folder fails before anything is written.
    ham = data.validate(data.load_ham10000(merge_with), str(merge_with)) if merge_with else None
    records = read_records(database_url).drop_duplicates("sha256", keep="first")
    if records.empty:
        raise DataError(
            "the database holds no prediction with a stored (consented) photo and a confirmed "
            "diagnosis yet: nothing to build"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-records-{uuid.uuid4().hex}"
    (tmp / "images").mkdir(parents=True)
    rows, missing = [], []
    try:
        for r in records.itertuples():
            ext = "jpg" if r.format == "jpeg" else "png"
            source = image_dir / r.sha256[:2] / f"{r.sha256}.{ext}"
            if not source.is_file():
                missing.append(r.prediction_id)
                continue
            image_id = f"{PREFIX}{r.sha256[:16]}"
            _copy_image(source, r.format, tmp / "images" / image_id)
            rows.append(
                {
                    "lesion_id": r.prediction_id,
                    "image_id": image_id,
                    "dx": r.diagnosis,
                    "dx_type": r.confirmation,
                    "age": None if pd.isna(r.age) else int(r.age),
                    "sex": r.sex,
                    "localization": r.body_location,
                }
            )
        if missing:
            log.warning("%d stored photos are missing under %s: skipped", len(missing), image_dir)
        if not rows:
            raise DataError(
                f"none of the {len(records)} consented photos is under {image_dir}: pass the "
                "gateway's SKIN_IMAGE_DIR as --image-dir"
            )
        table = pd.DataFrame(rows).astype({"age": "Int64"})
        table.to_csv(tmp / data.METADATA_FILE, index=False)
        frame = data.validate(data.load_ham10000(tmp), str(out), decode=True)
        summary = {
            "dataset_version": data.dataset_version(frame),
            "images": len(frame),
            "classes": dict(frame["label"].value_counts().sort_index()),
            "skipped_missing_photos": len(missing),
            "database": _redacted(database_url),
            "image_dir": str(image_dir.resolve()),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ham is not None:
        summary["combined"] = merge(out, ham)
    (out / "dataset.json").write_text(json.dumps(summary, indent=2, default=int) + "\n")
    return summary


def merge(records_dir: Path, ham: pd.DataFrame) -> dict[str, Any]:
    """``records_dir/combined.csv``: validated HAM10000 rows ``ham`` plus the records."""
    parts = [ham, data.validate(data.load_ham10000(records_dir), str(records_dir))]
    combined = pd.concat(parts, ignore_index=True)
    clash = set(parts[0]["image_id"]) & set(parts[1]["image_id"])
    if clash:
        raise DataError(f"image ids in both datasets: {sorted(clash)[:5]}")
    path = records_dir / "combined.csv"
    combined.drop(columns=["date"]).to_csv(path, index=False)
    merged = data.validate(data.load_csv(path), str(path))
    return {
        "csv": str(path),
        "images": len(merged),
        "dataset_version": data.dataset_version(merged),
    }


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.records_dataset", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--database-url", required=True, help="the gateway's SKIN_DATABASE_URL")
    p.add_argument("--image-dir", required=True, type=Path, help="the gateway's SKIN_IMAGE_DIR")
    p.add_argument("--out", required=True, type=Path, help="new folder for the dataset")
    p.add_argument(
        "--merge-with", type=Path, help="HAM10000-layout folder: also write combined.csv"
    )
    args = p.parse_args(argv)
    try:
        summary = build(args.database_url, args.image_dir, args.out, args.merge_with)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['images']} images to {args.out} (dataset version "
        f"{summary['dataset_version'][:16]}; {summary['skipped_missing_photos']} missing photos "
        "skipped)"
        + (
            f"; combined with HAM10000 in {summary['combined']['csv']}"
            if "combined" in summary
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
