"""Training data: read HAM10000's layout or a clinic's CSV, validate, version, split, weigh.

Everything here is plain pandas/numpy (no torch), so it is cheap to import and easy to test.
The one table every function takes and returns has the columns ``COLUMNS``:
``image_id, path, label, group, site, age, sex, date, dx_type`` (``group`` = lesion_id, or the
image_id when the data has none; ``site`` and ``sex`` are normalised to ``contracts.labels``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from contracts.errors import ConfigError, DataError
from contracts.images import index_images
from contracts.labels import BODY_SITES, CLASSES, SEXES, UNKNOWN_SITE

log = logging.getLogger(__name__)

COLUMNS = ("image_id", "path", "label", "group", "site", "age", "sex", "date", "dx_type")
METADATA_FILE = "HAM10000_metadata.csv"
SPLITS = ("train", "val", "test")
WEIGHTINGS = ("none", "inverse", "sqrt_inverse", "effective")
# The project's ignored .cache/ (never the data folder, which may be read-only).
CACHE_DIR = Path(os.environ.get("SKIN_CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache")
SHOW = 5  # offenders named in an error message

# A clinic's CSV may use HAM10000's column names instead of ours.
CSV_ALIASES = {"label": "dx", "group": "lesion_id", "site": "localization"}
JPEG_SOI, JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIXES = {
    "missing image": "add the image files (named <image_id>.jpg) or remove their rows",
    "unreadable image": "re-download or re-export these files as JPEG or PNG",
    "unknown label": f"labels must be one of {', '.join(CLASSES)}",
    "duplicate image_id": "each image_id must appear once; remove the repeated rows",
}


def load_ham10000(root: str | Path) -> pd.DataFrame:
    """Read ``root/HAM10000_metadata.csv``; images are found by ``image_id`` anywhere under root.

    The official download splits the images over ``HAM10000_images_part_1`` and ``_part_2``;
    a single ``images/`` folder works the same. Rows whose image is not found get ``path=None``
    and are reported by ``validate``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: point HAM10000_DIR (or data_dir) at a folder "
            f"holding {METADATA_FILE} and the images, or unset both to train on synthetic data"
        )
    meta = root / METADATA_FILE
    if not meta.is_file():
        raise DataError(
            f"{root} has no {METADATA_FILE}: a HAM10000-layout folder holds that file and the "
            "images (<image_id>.jpg, in any subfolder); for your own photos pass a csv_path"
        )
    raw = _read_csv(meta, required=("image_id", "dx"))
    index = index_images(root)
    raw = raw.rename(columns={v: k for k, v in CSV_ALIASES.items()})
    return _frame(raw, raw["image_id"].map(index))


def load_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read a clinic's CSV: ``path`` and ``label`` required; ``image_id, group, site, age, sex,
    date, dx_type`` optional (``dx``, ``lesion_id``, ``localization`` accepted as aliases).

    ``path`` is relative to the CSV's folder or absolute; ``date`` is ISO 8601 (YYYY-MM-DD).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist: check csv_path")
    raw = _read_csv(csv_path, required=("path", "label"))
    raw = raw.rename(columns={v: k for k, v in CSV_ALIASES.items() if k not in raw})
    base = csv_path.resolve().parent
    paths = raw["path"].map(lambda p: str(base / str(p).strip()), na_action="ignore")
    if "image_id" not in raw:
        raw["image_id"] = paths.map(lambda p: Path(p).stem, na_action="ignore")
    return _frame(raw, paths)


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable CSV ({e}): save it as UTF-8 CSV") from e
    raw.columns = [c.strip().lower() for c in raw.columns]
    aliases = {k: v for k, v in CSV_ALIASES.items() if k in required}
    missing = [c for c in required if c not in raw and aliases.get(c) not in raw]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)} (found: {', '.join(raw.columns)}); "
            f"add them with a header row, e.g. {','.join(required)}"
        )
    if raw.empty:
        raise DataError(f"{path} has a header but no rows: add one row per image")
    return raw


def _frame(raw: pd.DataFrame, paths: pd.Series) -> pd.DataFrame:
    """Normalise raw string columns (already named as in ``COLUMNS``) into ``COLUMNS``."""

    def text(col: str, default: str) -> pd.Series:
        s = raw[col] if col in raw else pd.Series(default, index=raw.index)
        return s.fillna(default).astype(str).str.strip().str.lower()

    image_id = raw["image_id"].astype(str).str.strip()
    group = raw["group"].fillna(image_id).astype(str).str.strip() if "group" in raw else image_id
    site, sex = text("site", UNKNOWN_SITE), text("sex", "unknown")
    _warn_unknown(site, BODY_SITES, "body site")
    _warn_unknown(sex, SEXES, "sex")
    date = pd.to_datetime(raw["date"], format="ISO8601", errors="coerce") if "date" in raw else None
    if date is not None and (bad := int((date.isna() & raw["date"].notna()).sum())):
        log.warning("%d dates are not ISO 8601 (YYYY-MM-DD) and were ignored", bad)
    return pd.DataFrame(
        {
            "image_id": image_id,
            "path": paths.astype(object).where(paths.notna(), None),
            "label": text("label", ""),
            "group": group,
            "site": site.where(site.isin(BODY_SITES), UNKNOWN_SITE),
            "age": pd.to_numeric(raw.get("age"), errors="coerce") if "age" in raw else np.nan,
            "sex": sex.where(sex.isin(SEXES), "unknown"),
            "date": date if date is not None else pd.NaT,
            "dx_type": text("dx_type", "unknown"),
        },
        columns=list(COLUMNS),
    ).astype({"age": "float64", "date": "datetime64[ns]"})


def _warn_unknown(values: pd.Series, known: tuple[str, ...], what: str) -> None:
    bad = values[~values.isin(known)]
    if len(bad):
        log.warning(
            "%d rows have an unknown %s (e.g. %r), read as 'unknown'; known: %s",
            len(bad), what, bad.iloc[0], ", ".join(known),
        )  # fmt: skip


def check_image(path: str | None, decode: bool = False) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it looks fine.

    Cheap by default (two small reads): a JPEG must start with SOI and end with the EOI marker
    FFD9 (a cut-off download lacks it), a PNG must carry its signature and IEND chunk.
    ``decode=True`` also decodes the whole image (about 0.15 ms per 200x150 JPEG).
    """
    if path is None:
        return "missing"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 32))  # some writers pad after the end marker
            tail = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if size == 0:
        return "empty file"
    if head.startswith(JPEG_SOI):
        if JPEG_EOI not in tail:
            return "truncated JPEG (no end marker FFD9)"
    elif head.startswith(PNG_SIGNATURE):
        if b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
    else:
        return "not a JPEG or PNG"
    if decode and cv2.imread(path, cv2.IMREAD_COLOR_RGB) is None:
        return "cannot be decoded"
    return None


def validate(
    df: pd.DataFrame, source: str, strict: bool = True, decode: bool = False
) -> pd.DataFrame:
    """Check every row; raise one ``DataError`` naming all problems, or skip bad rows.

    Problems: missing or unreadable images (see ``check_image``), labels outside
    ``contracts.labels.CLASSES``, repeated image ids. ``strict=False`` drops those rows, logs a
    warning with the counts and records them in ``df.attrs["skipped"]``.
    """
    found: dict[str, list[str]] = {}
    bad = np.zeros(len(df), dtype=bool)
    seen: set[str] = set()
    rows = zip(df["image_id"], df["path"], df["label"], strict=True)
    for i, (image_id, path, label) in enumerate(rows):
        reason = check_image(path, decode)
        for kind, hit, name in (
            ("missing image", reason == "missing", path or image_id),
            ("unreadable image", reason not in (None, "missing"), f"{path} ({reason})"),
            ("unknown label", label not in CLASSES, f"{image_id} ({label!r})"),
            ("duplicate image_id", image_id in seen, image_id),
        ):
            if hit:
                found.setdefault(kind, []).append(name)
                bad[i] = True
        seen.add(image_id)
    if not found:
        return df
    summary = "; ".join(
        f"{len(v)} {k}{'s' * (len(v) > 1)} (first: {', '.join(v[:SHOW])}): {FIXES[k]}"
        for k, v in found.items()
    )
    if strict:
        raise DataError(
            f"{source}: {summary}. Or skip these rows: strict=False (--data.strict false)"
        )
    log.warning("%s: skipped %d of %d rows: %s", source, int(bad.sum()), len(df), summary)
    kept = df[~bad].reset_index(drop=True)
    if kept.empty:
        raise DataError(f"{source}: no usable rows left after skipping: {summary}")
    kept.attrs["skipped"] = {k: len(v) for k, v in found.items()}
    return kept


def dataset_version(df: pd.DataFrame, cache_dir: Path | None = None) -> str:
    """sha256 hex over ``(image_id, label, sha256 of the image bytes)``, sorted by image_id.

    Reordering rows keeps the version; changing a label or one byte of an image changes it.
    Per-file hashes are cached in ``cache_dir/file_hashes.json`` keyed by (path, size, mtime),
    so a second run only stats the files.
    """
    cache_file = (cache_dir or CACHE_DIR) / "file_hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    digest = hashlib.sha256()
    for image_id, label, path in sorted(zip(df["image_id"], df["label"], df["path"], strict=True)):
        st = os.stat(path)
        key, entry = os.path.abspath(path), cache.get(os.path.abspath(path))
        if entry is None or entry[:2] != [st.st_size, st.st_mtime_ns]:
            with open(path, "rb") as f:
                entry = [st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()]
            cache[key], changed = entry, True
        digest.update(f"{image_id}\t{label}\t{entry[2]}\n".encode())
    if changed:
        _save_cache(cache_file, {k: v for k, v in cache.items() if os.path.exists(k)})
    return digest.hexdigest()


def _save_cache(path: Path, cache: dict) -> None:
    # Write then rename: concurrent runs (DDP ranks) never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, path)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ``ConfigError`` unless both fractions are in [0, 1) and leave room for training."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
            "[0, 1) and sum to less than 1, e.g. 0.15 and 0.15"
        )


def _share(n: int, fraction: float) -> int:
    # At least one lesion in every split asked for; round half up (not to even).
    return 0 if fraction == 0 else max(1, math.floor(n * fraction + 0.5))


def _take(df: pd.DataFrame, side: pd.Series) -> dict[str, pd.DataFrame]:
    return {s: df[side.to_numpy() == s].reset_index(drop=True) for s in SPLITS}


def grouped_split(
    df: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42
) -> dict[str, pd.DataFrame]:
    """Split by ``group`` (no lesion on two sides), stratified by class, seeded.

    Per class, its lesions (a lesion's class is its most frequent label) are shuffled and cut
    by the fractions, with at least one lesion per class in every split asked for. Each class
    has its own random stream, so the result does not depend on row order or other classes.
    Rows keep their input order within a split; the index is reset (row position = index).
    """
    check_fractions(val_fraction, test_fraction)
    # crosstab columns are sorted (= CLASSES order), so ties go to the first class: stable.
    group_class = pd.crosstab(df["group"], df["label"]).idxmax(axis=1)
    side: dict[str, str] = {}
    for i, cls in enumerate(CLASSES):
        groups = np.sort(group_class.index[group_class == cls].to_numpy().astype(str))
        if not len(groups):
            continue
        groups = np.random.default_rng([seed, i]).permutation(groups)
        n_test, n_val = _share(len(groups), test_fraction), _share(len(groups), val_fraction)
        if len(groups) - n_test - n_val < 1:
            asked = [s for s, f in zip(SPLITS, (1, val_fraction, test_fraction), strict=True) if f]
            raise DataError(
                f"class '{cls}' has only {len(groups)} lesion(s), too few for a {'/'.join(asked)} "
                f"split (val_fraction={val_fraction}, test_fraction={test_fraction}): every split "
                f"needs at least one lesion of each class. Add images of '{cls}', or set "
                "val_fraction or test_fraction to 0"
            )
        side.update(dict.fromkeys(groups[:n_test], "test"))
        side.update(dict.fromkeys(groups[n_test : n_test + n_val], "val"))
        side.update(dict.fromkeys(groups[n_test + n_val :], "train"))
    return _take(df, df["group"].astype(str).map(side))


def temporal_split(
    df: pd.DataFrame,
    cutoff: str | pd.Timestamp | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, pd.DataFrame]:
    """Train on lesions first seen before ``cutoff``, test on those first seen on or after it.

    A lesion goes wholly to the side of its first image's date. Validation is the latest
    ``val_fraction`` of the training lesions (the tail of train by date). Without a cutoff,
    the date that leaves ``test_fraction`` of the lesions after it is used.
    """
    check_fractions(val_fraction, test_fraction)
    undated = df.loc[df["date"].isna(), "image_id"].tolist()
    if undated:
        raise DataError(
            f"a temporal split needs a date on every row, {len(undated)} have none (first: "
            f"{', '.join(undated[:SHOW])}): add an ISO 8601 'date' column or use split='grouped'"
        )
    first = df.groupby("group")["date"].min()
    first = first.iloc[np.lexsort((first.index.astype(str), first.to_numpy()))]
    try:
        cut = pd.Timestamp(cutoff) if cutoff is not None else first.quantile(1 - test_fraction)
    except ValueError as e:
        raise ConfigError(f"temporal_cutoff {cutoff!r} is not a date (use YYYY-MM-DD)") from e
    before = first[first < cut]
    if before.empty or len(before) == len(first):
        raise DataError(
            f"temporal_cutoff {cut.date()} leaves no lesion on one side (dates run from "
            f"{first.iloc[0].date()} to {first.iloc[-1].date()}): choose a cutoff inside that range"
        )
    n_val = _share(len(before), val_fraction) if len(before) > 1 else 0
    side = pd.Series("test", index=first.index)
    side[before.index] = "train"
    side[before.index[len(before) - n_val :]] = "val"
    splits = _take(df, df["group"].map(side))
    for name, part in splits.items():
        if missing := sorted(set(df["label"]) - set(part["label"])):
            log.warning("temporal split: %s has no images of %s", name, ", ".join(missing))
    return splits


def limit_per_class(df: pd.DataFrame, n: int, seed: int = 42) -> pd.DataFrame:
    """At most ``n`` rows per class, chosen at random (seeded), input order kept."""
    keep = df.sample(frac=1.0, random_state=seed).groupby("label").head(n).index
    return df.loc[np.sort(keep)].reset_index(drop=True)


def class_counts(labels: Iterable[str]) -> np.ndarray:
    """Images per class, in ``CLASSES`` order."""
    return pd.Series(list(labels)).value_counts().reindex(CLASSES, fill_value=0).to_numpy()


def class_weights(
    labels: Iterable[str], scheme: str = "sqrt_inverse", beta: float = 0.999
) -> np.ndarray:
    """Loss weight per class (``CLASSES`` order) from the training labels.

    Schemes, with n images, k classes present and n_c images of class c:
    ``inverse`` n / (k n_c); ``sqrt_inverse`` its square root (softer); ``effective`` the
    class-balanced effective number (1 - beta) / (1 - beta^n_c) (Cui et al. 2019); ``none``
    all ones. Weights are normalised so that their mean over the training samples is 1
    (sum_c n_c w_c = n), which keeps the loss scale, and thus the learning rate, comparable
    across schemes. Classes absent from training get weight 0.
    """
    counts = class_counts(labels).astype(float)
    if scheme not in WEIGHTINGS:
        raise ConfigError(f"class_weighting {scheme!r} is unknown; use one of {WEIGHTINGS}")
    if scheme == "none":
        return np.ones(len(CLASSES))
    present = counts > 0
    n, k, c = counts.sum(), present.sum(), counts[present]
    w = np.zeros(len(CLASSES))
    w[present] = {
        "inverse": lambda: n / (k * c),
        "sqrt_inverse": lambda: np.sqrt(n / (k * c)),
        "effective": lambda: (1 - beta) / (1 - beta**c),
    }[scheme]()
    return w * n / (counts * w).sum()
