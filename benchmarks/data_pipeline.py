"""Data pipeline speed without a model: decode + training augmentation in one process (what
one DataLoader worker delivers), the two decoders side by side, and ``dataset_version`` with an
empty and a filled hash cache.

Run: ``python -m benchmarks.data_pipeline`` (reads ``HAM10000_DIR``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.common import rate, repeat
from contracts.images import index_images, read_image
from training import data
from training.augment import train_transform

SIZE = (112, 150)


def _read_pil(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def measure(ham_dir: str | Path, n: int = 512, size: tuple[int, int] = SIZE) -> dict:
    """Images/s of decode (cv2, PIL) and decode + train augmentation at ``size``, one process.

    The first ``n`` images (sorted by name) are read once beforehand, so the figures are
    decode and augment cost, not disk. cv2 runs single-threaded, as in training (see
    ``LesionDataModule.setup``). Each figure is the median of 3 runs.
    """
    paths = sorted(index_images(Path(ham_dir)).values())[:n]
    if not paths:
        raise FileNotFoundError(f"no images under {ham_dir}")
    for p in paths:
        Path(p).read_bytes()
    transform = train_transform(size, seed=0)

    def pipeline() -> None:
        for p in paths:
            transform(image=read_image(p))

    def loop(fn) -> float:
        return repeat(lambda: rate(lambda: [fn(p) for p in paths], len(paths)), 3).median

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return {
            "images": len(paths),
            "size": list(size),
            "decode_cv2_per_s": round(loop(read_image)),
            "decode_pil_per_s": round(loop(_read_pil)),
            "decode_augment_per_s": round(repeat(lambda: rate(pipeline, len(paths)), 3).median),
        }
    finally:
        cv2.setNumThreads(threads)


def measure_version(ham_dir: str | Path) -> dict:
    """Seconds for ``load_ham10000`` + ``validate`` and for ``dataset_version`` cold and warm.

    Cold = empty hash cache (every file read and hashed); the OS page cache may still hold the
    files. Warm = the second call, which only stats the files.
    """
    start = time.perf_counter()
    df = data.validate(data.load_ham10000(ham_dir), str(ham_dir))
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            version = data.dataset_version(df, Path(cache))
            times.append(time.perf_counter() - start)
    return {
        "images": len(df),
        "load_validate_s": round(load_s, 3),
        "version_cold_s": round(times[0], 3),
        "version_warm_s": round(times[1], 3),
        "version": version[:16],
    }


if __name__ == "__main__":
    ham = os.environ.get("HAM10000_DIR") or "../shared/data/ham10000"
    print(json.dumps({"pipeline": measure(ham), "version": measure_version(ham)}, indent=2))
