"""The benchmark harness's own parts: the eager baseline answers like a classifier, the
profile parser counts what py-spy wrote, and the CPU accounting sees a busy child process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.gateway_bench import tree_cpu_s
from benchmarks.profile_gateway import parse
from contracts.labels import CLASSES


def test_eager_baseline_classifies_a_real_photo(
    real_lesions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAGER_MODEL", "compact_cnn")
    from benchmarks import eager_app

    photo = sorted(real_lesions_dir.glob("*.jpg"))[0].read_bytes()
    with TestClient(eager_app.app) as client:
        r = client.post("/predict", files={"image": ("a.jpg", photo, "image/jpeg")})
        bad = client.post("/predict", files={"image": ("a.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 200
    body = r.json()
    assert body["top_class"] in CLASSES
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert max(body["probabilities"], key=body["probabilities"].get) == body["top_class"]
    assert bad.status_code == 422


def test_profile_parser_drops_waiting_threads_and_counts_inclusive_once() -> None:
    raw = "\n".join(
        [
            "python;MainThread;main (serving/__main__.py);handle (serving/app.py);"
            "decode (contracts/images.py) 30",
            "python;Thread-1;run (threading.py);decode (contracts/images.py);"
            "decode (contracts/images.py) 10",  # recursion: inclusive counts it once
            "python;Thread-2;run (threading.py);Condition.wait (threading.py) 500",
            "garbage line",
        ]
    )
    res = parse(raw)
    assert res["total"] == 40  # the 500 waiting samples are not work
    assert res["inclusive"]["decode (contracts/images.py)"] == 40
    assert res["own"]["decode (contracts/images.py)"] == 40
    assert res["inclusive"]["handle (serving/app.py)"] == 30
    assert "Condition.wait (threading.py)" not in res["inclusive"]


def test_cpu_accounting_includes_children() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])",
        ]
    )
    start, seen = tree_cpu_s(parent.pid), 0.0
    while parent.poll() is None:  # a finished child's time leaves the tree: sample while alive
        seen = max(seen, tree_cpu_s(parent.pid) - start)
        time.sleep(0.05)
    assert seen > 0.3  # the grandchild's spinning counts toward the parent's tree
