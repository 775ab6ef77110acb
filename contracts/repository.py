"""Versions of a model in the repository, which one is served, and the history of that choice.

The served version is the production ``config.pbtxt``'s ``version_policy { specific { ... } }``:
the file NVIDIA's Triton reads in production. ``history.jsonl`` beside it records every change
(one JSON object a line, append-only), so a rollback knows what was served before. Every change
holds the model folder's lock, so exports, promotions and deletions never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.metadata import MetadataError, VersionMetadata, read_metadata
from contracts.triton_config import (
    CONFIG_FILE,
    ConfigFileError,
    read_config,
    served_versions,
    set_clinical_input,
    set_outputs,
    set_served_version,
    write_config,
)

HISTORY_FILE = "history.jsonl"
MODEL_CARD_FILE = "MODEL_CARD.md"  # in a version folder: written by evaluate --export
LOCK_FILE = ".lock"
PUSHES = ("first_export", "promote")


def model_dirs(repository: Path) -> list[Path]:
    """Model folders of a repository (those with a ``config.pbtxt``), sorted by name."""
    return sorted(p.parent for p in Path(repository).glob(f"*/{CONFIG_FILE}"))


def versions(model_dir: Path) -> list[int]:
    """Version numbers present in a model folder (complete ones: with ``model.pt``)."""
    found = [p.parent.name for p in Path(model_dir).glob("*/model.pt")]
    return sorted(int(v) for v in found if v.isdigit())


class VersionError(ValueError):
    """A version operation cannot be done as asked; the message says why and what to do."""


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Exclusive lock on a model folder (advisory, across processes on this host)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def served_version(model_dir: Path) -> int | None:
    """The version the production config serves, or None (no config, or a non-specific policy)."""
    try:
        served = served_versions(read_config(model_dir / CONFIG_FILE))
    except ConfigFileError:
        return None
    return served[0] if served else None


def history(model_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (model_dir / HISTORY_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def record(model_dir: Path, action: str, version: int, previous: int | None, **extra: Any) -> None:
    """Append one event to the history (flushed and synced: it is the rollback's memory)."""
    event = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        "user": os.environ.get("USER", ""),
        **extra,
    }
    with open(model_dir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()
        os.fsync(f.fileno())


def served_stack(events: list[dict[str, Any]]) -> list[int]:
    """Replay the history: promotions push a version, rollbacks pop one."""
    stack: list[int] = []
    for event in events:
        if event["action"] in PUSHES:
            stack.append(int(event["version"]))
        elif event["action"] == "rollback" and stack:
            stack.pop()
    return stack


def _require_version(model_dir: Path, version: int) -> None:
    present = versions(model_dir)
    if version not in present:
        raise VersionError(
            f"{model_dir.name} has no version {version}; versions: "
            f"{', '.join(map(str, present)) or 'none'} (see `python -m serving.versions list`)"
        )


def served_outputs(model_dir: Path, version: int) -> list[str]:
    """The outputs ``version`` returns, from its ``metadata.json``
    (:meth:`VersionMetadata.output_names`).

    Raises:
        VersionError: its ``metadata.json`` is missing or unreadable: which outputs the model
            returns, and so the config Triton needs, is unknown.
    """
    try:
        return read_metadata(model_dir / str(version)).output_names()
    except MetadataError as exc:
        raise VersionError(
            f"version {version} of {model_dir.name} cannot be served: {exc}. Its outputs (and "
            "the config Triton needs) are unknown without it; re-export the model"
        ) from None


def _serve(model_dir: Path, version: int) -> None:
    """Make the config serve ``version``, with the inputs it takes (the clinical one of a fusion
    version) and the outputs it returns."""
    outputs = served_outputs(model_dir, version)
    try:
        clinical_dim = read_metadata(model_dir / str(version)).clinical_dim()
    except MetadataError:  # served_outputs read it a moment ago; a race reads as image-only
        clinical_dim = None
    cfg = read_config(model_dir / CONFIG_FILE)
    set_served_version(cfg, version)
    set_clinical_input(cfg, clinical_dim)
    set_outputs(cfg, outputs)
    write_config(model_dir / CONFIG_FILE, cfg)


def promote(model_dir: Path, version: int) -> int | None:
    """Serve ``version``; returns the version served before (None if none).

    Raises:
        VersionError: no such version.
    """
    with model_lock(model_dir):
        _require_version(model_dir, version)
        previous = served_version(model_dir)
        if previous != version:
            _serve(model_dir, version)
            record(model_dir, "promote", version, previous)
        return previous


def rollback(model_dir: Path) -> tuple[int, int]:
    """Serve the version served before the current one; returns ``(current, restored)``.

    Raises:
        VersionError: no earlier version recorded, or it was deleted since.
    """
    with model_lock(model_dir):
        current = served_version(model_dir)
        stack = served_stack(history(model_dir))
        if current is None or len(stack) < 2 or stack[-1] != current:
            raise VersionError(
                f"no earlier served version of {model_dir.name} is recorded in {HISTORY_FILE} "
                f"(serving {current}): choose one with `python -m serving.versions promote VERSION`"
            )
        target = stack[-2]
        if target not in versions(model_dir):
            raise VersionError(
                f"version {target}, served before {current}, has been deleted: "
                "choose another with `python -m serving.versions promote VERSION`"
            )
        _serve(model_dir, target)
        record(model_dir, "rollback", target, current)
        return current, target


def delete(model_dir: Path, version: int) -> None:
    """Remove a version that is not served.

    Raises:
        VersionError: no such version, or it is the served one.
    """
    with model_lock(model_dir):
        _require_version(model_dir, version)
        if served_version(model_dir) == version:
            raise VersionError(
                f"version {version} of {model_dir.name} is the served one and cannot be deleted: "
                "promote another version (or roll back) first"
            )
        # Out of Triton's sight in one step, then removed at leisure.
        trash = model_dir / f".deleted-{version}-{uuid.uuid4().hex[:8]}"
        os.rename(model_dir / str(version), trash)
        record(model_dir, "delete", version, None)
        shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True)
class VersionInfo:
    """One line of ``python -m serving.versions list``."""

    version: int
    served: bool
    created_at: str
    dataset_version: str
    synthetic: bool | None
    balanced_accuracy: float | None
    parity: float | None
    model_name: str


def list_versions(model_dir: Path) -> list[VersionInfo]:
    """Every complete version of a model folder with what its ``metadata.json`` says; blank
    fields where that file is missing or unreadable."""
    served = served_version(model_dir)
    out = []
    for v in versions(model_dir):
        try:
            meta: VersionMetadata | None = read_metadata(model_dir / str(v))
        except MetadataError:
            meta = None
        out.append(_version_info(v, v == served, meta))
    return out


def _version_info(version: int, served: bool, meta: VersionMetadata | None) -> VersionInfo:
    if meta is None:
        return VersionInfo(version, served, "", "", None, None, None, "")
    parity = (meta.parity or {}).get("max_abs_diff")
    return VersionInfo(
        version=version,
        served=served,
        created_at=str(meta.created_at or ""),
        dataset_version=str(meta.dataset_version or ""),
        synthetic=meta.synthetic,
        balanced_accuracy=meta.metrics.get("val/balanced_accuracy"),
        parity=parity,
        model_name=str(meta.training_config.get("model_name", "")),
    )
