"""Offline predictions through Triton: a folder of images, or a CSV, to a CSV of probabilities.

    python -m serving.batch_predict --input FOLDER_OR_CSV --output predictions.csv \
        [--triton-url host:port] [--batch-size 32]

The input is a folder (every JPEG/PNG below it, ``image_id`` = file name without extension)
or a CSV with a ``path`` column (relative to the CSV) or HAM10000's ``image_id`` column (images
found below the CSV's folder). Images are decoded and resized with ``eval_resize`` to the input
size of the version Triton serves. The output has ``image_id, path``, one probability column per
class, ``predicted`` (the class the version's decision rule names, ``contracts.decision``, as
the gateway's ``top_class``), ``model_version`` and ``refusal``. Interrupted runs resume: ids
already in the output are skipped, and every batch is flushed to disk before the next is sent.

The gateway's gate applies (:mod:`serving.gate`, docs/gateway.md): an image that fails a quality
check of the served version's ``metadata.json`` (under ``--repository``) is not sent to Triton,
and one whose out-of-distribution score is over the version's threshold is not diagnosed. Their
rows have the reason code in ``refusal`` and no probabilities or ``predicted``; a diagnosed row
has an empty ``refusal``. ``--no-quality-checks`` and ``--no-ood-checks`` turn the gate off.

A version that takes the patient metadata (a fusion version: ``clinical__1`` beside
``image__0``) gets each image's age, sex and body site encoded by ``contracts.clinical``: from
the CSV's ``age``, ``sex`` and ``localization`` (or ``site``) columns, or for a folder from a
``HAM10000_metadata.csv`` or ``labels.csv`` in it; a missing value is "unknown", never an error.
A version whose encoding is not this code's is refused before anything is sent.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contracts.clinical import ClinicalEncodingError, encode_rows
from contracts.decision import ARGMAX_RULE
from contracts.errors import DataError
from contracts.images import index_images, read_image
from contracts.labels import CLASSES
from contracts.metadata import METADATA_FILE, MetadataError, VersionMetadata, read_metadata
from contracts.quality import Refusal
from contracts.tensors import CLINICAL_INPUT_NAME, DEFAULT_MODEL_NAME
from serving.gate import Gate, GatePolicy, check_score, gate_for, screen_pixels
from serving.triton.client import DEFAULT_URL, TritonClassifier, TritonError, input_size
from serving.triton.state import read_state

COLUMNS = ["image_id", "path", *CLASSES, "predicted", "model_version", "refusal"]


def read_table(source: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's column names (stripped, lower case) and its rows without their empty cells.

    Raises:
        DataError: not UTF-8, not CSV, no header, or a row longer than the header.
    """
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if row]  # blank lines carry nothing
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not a readable CSV ({exc})") from None
    if not lines:
        raise DataError(f"{source} is not a readable CSV (No columns to parse from file)")
    header = [c.strip().lower() for c in lines[0]]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) > len(header):
            raise DataError(
                f"{source} is not a readable CSV (line {number} has {len(line)} fields, "
                f"the header {len(header)})"
            )
        rows.append({k: v for k, v in zip(header, line, strict=False) if v != ""})
    return header, rows


def find_images(source: Path) -> list[tuple[str, str]]:
    """``(image_id, path)`` pairs of a folder or a CSV, unique ids, in a stable order."""
    if source.is_dir():
        pairs = sorted(index_images(source).items())
    elif source.is_file():
        header, rows = read_table(source)
        base = source.resolve().parent
        if "path" in header:
            pairs = [
                (r.get("image_id") or Path(r["path"]).stem, str(base / r["path"]))
                for r in rows
                if "path" in r
            ]
        elif "image_id" in header:
            index = index_images(base)
            ids = [r["image_id"] for r in rows if "image_id" in r]
            missing = [i for i in ids if i not in index]
            if missing:
                raise DataError(
                    f"{len(missing)} image_id(s) of {source} have no image below {base} "
                    f"(e.g. {', '.join(missing[:3])}): add <image_id>.jpg files or a path column"
                )
            pairs = [(i, index[i]) for i in ids]
        else:
            raise DataError(f"{source} has neither a path nor an image_id column")
    else:
        raise DataError(f"--input {source} does not exist: give a folder of images or a CSV")
    unique: dict[str, str] = {}
    for image_id, path in pairs:
        unique.setdefault(str(image_id), str(path))  # a repeated id: its first path wins
    return list(unique.items())


# A folder's table of who each photo is of (HAM10000's, or the real lesions' labels.csv).
FOLDER_TABLES = ("HAM10000_metadata.csv", "labels.csv")


def clinical_table(source: Path) -> dict[str, dict[str, str | None]]:
    """``{image_id: {"age", "sex", "site"}}`` of the rows that say them (module doc); ``{}``
    when the input has none. Unreadable tables count as none: the metadata is optional."""
    tables = [source] if source.is_file() else [source / n for n in FOLDER_TABLES]
    found: dict[str, dict[str, str | None]] = {}
    for table in tables:
        if not table.is_file():
            continue
        try:
            _, rows = read_table(table)
        except DataError:
            continue
        for row in rows:
            image_id = row.get("image_id") or (Path(row["path"]).stem if "path" in row else None)
            if image_id:
                site = row.get("localization", row.get("site"))
                found.setdefault(
                    str(image_id), {"age": row.get("age"), "sex": row.get("sex"), "site": site}
                )
    return found


def takes_clinical(metadata: dict[str, Any]) -> bool:
    """Whether the served model (Triton's model metadata) takes the clinical input."""
    return any(t.get("name") == CLINICAL_INPUT_NAME for t in metadata.get("inputs") or [])


def done_ids(output: Path) -> set[str]:
    """Ids already written; repairs a last line cut short by an interruption."""
    if not output.exists() or output.stat().st_size == 0:
        return set()
    with open(output, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
    with open(output, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != COLUMNS:
            raise DataError(
                f"{output} has columns {header}, expected {COLUMNS}: write to a new --output "
                "(it is not a file this tool wrote, or one written before the refusal column)"
            )
        return {row[0] for row in reader if row}


def batches(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _version_input_size(repository: Path, model: str, version: str) -> tuple[int, int]:
    try:
        return read_metadata(repository / model / version).input_size
    except MetadataError as exc:
        raise DataError(
            f"{model} version {version} takes images of any size and its metadata.json says "
            f"which ({exc}): pass --repository, the model repository Triton serves"
        ) from None


def _version_metadata(repository: Path, model: str, version: str) -> VersionMetadata | None:
    path = repository / model / version / METADATA_FILE
    try:
        return read_metadata(path) if path.exists() else None
    except MetadataError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return None


def served_gate(
    client: TritonClassifier, repository: Path, policy: GatePolicy, metadata: dict[str, Any]
) -> Gate:
    """The gate of the version Triton serves (its ``metadata.json`` under ``repository``),
    with a warning on stderr for what it lacks."""
    versions = [str(v) for v in metadata.get("versions") or []]
    if not versions:
        return gate_for(None, "?", GatePolicy(False, False))
    version = max(versions, key=int)
    outputs = [str(t.get("name")) for t in metadata.get("outputs") or []] or None
    gate = gate_for(
        _version_metadata(repository, client.model_name, version), version, policy, outputs
    )
    for warning in gate.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return gate


def predict_folder(  # noqa: PLR0913 (the CLI's options)
    source: Path,
    output: Path,
    client: TritonClassifier,
    batch_size: int = 32,
    progress: bool = True,
    repository: Path = Path("model_repository"),
    policy: GatePolicy | None = None,
) -> tuple[int, list[str]]:
    """Classify every image of ``source`` not yet in ``output``; returns (written, failures).

    Images are resized to the served version's input size: Triton's, or, for a model that
    takes any size, the one in the version's ``metadata.json`` under ``repository``. The
    version's gate refuses what the gateway would (``policy``: the checks on or off); a refused
    image is written with its reason in ``refusal`` and counts as written.
    """
    metadata = client.model_metadata()
    version = ",".join(metadata.get("versions", []))
    size = input_size(metadata) or _version_input_size(repository, client.model_name, version)
    gate = served_gate(client, repository, policy or GatePolicy(), metadata)
    fusion = takes_clinical(metadata)
    patients = clinical_table(source) if fusion else {}
    served = _version_metadata(repository, client.model_name, version)
    # ``predicted`` is the class the version names (contracts.decision), as the gateway's.
    rule = served.decision_rule() if served is not None else ARGMAX_RULE
    if fusion:
        try:
            if served is not None:
                served.check_clinical()
        except ClinicalEncodingError as exc:
            raise DataError(str(exc)) from None
    done = done_ids(output)
    todo = [(i, p) for i, p in find_images(source) if i not in done]
    failures: list[str] = []
    written = 0

    def load(item: tuple[str, str]) -> tuple[np.ndarray | None, Refusal | None] | None:
        try:
            return screen_pixels(read_image(item[1]), size, gate.quality)
        except (DataError, ValueError, OSError):
            return None

    def refused_row(image_id: str, path: str, refusal: Refusal) -> list[str]:
        return [image_id, path, *[""] * len(CLASSES), "", version, refusal.code]

    new_file = not output.exists() or output.stat().st_size == 0
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(output, "a", newline="") as f,
        ThreadPoolExecutor(2) as pool,  # decoding overlaps nothing else; 2 threads suffice
        tqdm(total=len(todo) + len(done), initial=len(done), disable=not progress) as bar,
    ):
        writer = csv.writer(f)
        if new_file:
            writer.writerow(COLUMNS)
        for chunk in batches(todo, batch_size):
            loaded = list(pool.map(load, chunk))
            failures += [f"{i} ({p})" for (i, p), x in zip(chunk, loaded, strict=True) if x is None]
            rows: dict[str, list[str]] = {}  # image_id -> row, written in the input's order
            ok: list[tuple[tuple[str, str], np.ndarray]] = []
            for item, x in zip(chunk, loaded, strict=True):
                if x is None:
                    continue
                model_input, refusal = x
                if refusal is not None or model_input is None:
                    assert refusal is not None
                    rows[item[0]] = refused_row(*item, refusal)
                else:
                    ok.append((item, model_input))
            if ok:
                batch = np.stack([img for _, img in ok])
                rows_in = [patients.get(image_id, {}) for (image_id, _), _ in ok]
                clinical = encode_rows(rows_in) if fusion else None
                threshold = gate.ood_threshold
                if threshold is None:
                    probs, scores = client.predict(batch, clinical=clinical), None
                else:
                    probs, scores = client.predict_with_score(batch, clinical=clinical)
                for n, ((image_id, path), _) in enumerate(ok):
                    row = probs[n]
                    score = None if scores is None else float(np.asarray(scores).reshape(-1)[n])
                    refusal = None
                    if score is not None and threshold is not None:
                        refusal = check_score(score, threshold)
                    if refusal is not None:
                        rows[image_id] = refused_row(image_id, path, refusal)
                        continue
                    cells = [f"{p:.6g}" for p in row]
                    predicted = CLASSES[int(rule.decide(row))]
                    rows[image_id] = [image_id, path, *cells, predicted, version, ""]
            if rows:
                writer.writerows(rows[i] for i, _ in chunk if i in rows)
                f.flush()
                os.fsync(f.fileno())
                written += len(rows)
            bar.update(len(chunk))
    return written, failures


def refusal_counts(output: Path) -> dict[str, int]:
    """Rows of ``output`` with a refusal, by reason code."""
    counts: dict[str, int] = {}
    if not output.exists():
        return counts
    with open(output, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("refusal"):
                counts[row["refusal"]] = counts.get(row["refusal"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.batch_predict", description=__doc__)
    p.add_argument("--input", required=True, type=Path, help="folder of images, or a CSV")
    p.add_argument("--output", required=True, type=Path, help="CSV to write (appended to)")
    p.add_argument("--triton-url", help="gRPC host:port (default: the local server's)")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("SKIN_MODEL_REPOSITORY", "model_repository")),
        help="the model repository (each version's metadata.json gives its input size)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of one batch, seconds")
    p.add_argument(
        "--no-quality-checks",
        action="store_true",
        help="diagnose images the version's quality checks would refuse",
    )
    p.add_argument(
        "--no-ood-checks",
        action="store_true",
        help="diagnose images over the version's out-of-distribution threshold",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    url = args.triton_url or read_state().get("grpc_url") or DEFAULT_URL
    client = TritonClassifier(url, args.model_name, timeout_s=args.timeout)
    try:
        policy = GatePolicy(not args.no_quality_checks, not args.no_ood_checks)
        written, failures = predict_folder(
            args.input,
            args.output,
            client,
            args.batch_size,
            repository=args.repository,
            policy=policy,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TritonError as exc:
        print(f"error: {exc}\n(rows written so far are kept; rerun to resume)", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"wrote {written} predictions to {args.output}")
    refused = refusal_counts(args.output)
    if refused:
        reasons = ", ".join(f"{n} {code}" for code, n in sorted(refused.items()))
        print(f"refused in {args.output} (no diagnosis; see the refusal column): {reasons}")
    if failures:
        print(
            f"{len(failures)} image(s) could not be decoded and were skipped: "
            f"{', '.join(failures[:5])}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
