"""Consented uploads kept on disk, content-addressed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def image_path(sha256: str, fmt: str, root: Path) -> Path:
    """Where a consented upload is kept: ``root/<sha[:2]>/<sha>.<jpg|png>``."""
    return root / sha256[:2] / f"{sha256}.{'jpg' if fmt == 'jpeg' else 'png'}"


def store_image(data: bytes, sha256: str, fmt: str, root: Path) -> Path:
    """Keep the original bytes content-addressed at :func:`image_path`.

    Written to a temporary file and renamed, so a crash never leaves half an image; a
    second upload of the same bytes finds the file and writes nothing.
    """
    path = image_path(sha256, fmt, root)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
