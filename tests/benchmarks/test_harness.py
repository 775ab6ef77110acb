"""The benchmark harness's own parts: the eager baseline answers like a classifier, the
profile parser counts what py-spy wrote, and the CPU accounting sees a busy child process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.gateway_bench import markdown, tree_cpu_s
from benchmarks.profile_gateway import parse, thread_cpu_s
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


def test_thread_accounting_names_the_main_thread_and_python_threads() -> None:
    busy = (
        "import threading, time\n"
        "def spin():\n"
        "    t = time.thread_time()\n"
        "    while time.thread_time() - t < 0.6: pass\n"
        "w = threading.Thread(target=spin); w.start(); spin(); w.join()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", busy])
    seen: dict[str, float] = {}
    while child.poll() is None:  # sample while alive: a finished thread has no /proc entry
        with contextlib.suppress(FileNotFoundError):
            for name, cpu in thread_cpu_s(child.pid).items():
                seen[name] = max(seen.get(name, 0.0), cpu)
        time.sleep(0.05)
    assert seen.get("event loop", 0.0) > 0.3  # the main thread
    assert seen.get("worker threads", 0.0) > 0.3  # a Python thread


def test_markdown_of_a_subset_of_targets_with_other_checkouts() -> None:
    run = {"rps": 10.0, "rps_range": [9.0, 11.0], "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
    level = {
        "concurrency": 8,
        "gateway": {**run, "cpu_ms": {"gateway": 10.0}},
        "baseline": {**run, "rps": 5.0, "cpu_ms": {"gateway": 20.0}},
        "tree:step1": {**run, "rps": 8.0, "cpu_ms": {"gateway": 15.0}},
        "gateway_vs_baseline": 2.0,
        "gateway_vs_tree:step1": 1.25,
    }
    text = markdown(
        {
            "model": "m",
            "input_size": [1, 2],
            "photos": "p",
            "requests_per_level": 1,
            "repeats": 1,
            "triton": "t",
            "machine": "x",
            "levels": [level],
        }
    )
    assert "| 8 | gateway (baseline checkout) + Triton | 5.0" in text
    assert "| 8 | gateway from step1 + Triton | 8.0" in text
    assert "| 8 | gateway_vs_baseline | 2.00 |" in text
    assert "eager" not in text  # not run: no row, no ratio
