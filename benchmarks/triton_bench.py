"""The real Triton on this machine: batch-1 latency and throughput under concurrent clients,
with dynamic batching on and off, side by side in one run.

The model is ``compact_cnn`` at its default input size inside the exported wrapper (uint8 in,
probabilities out), exported by ``training.export`` into a temporary repository; the weights
are untrained, which changes nothing about speed. Each mode gets its own server (one CPU
instance, ``torch_threads`` threads), started and stopped in turn so they never compete.

    python -m benchmarks.triton_bench
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

import models
from benchmarks.common import machine
from serving.triton.server import run_triton
from serving.triton_client import DEFAULT_MODEL_NAME, TritonClassifier
from training.export import default_parity_dir, export_model, parity_batch

MODEL = "compact_cnn"


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples_s)
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
    }


def _stats(url: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(url) as client:
        model = client.get_inference_statistics(DEFAULT_MODEL_NAME, as_json=True)["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def latency(url: str, images: np.ndarray, n: int) -> dict[str, float]:
    """One client, one image a request, one request at a time."""
    client = TritonClassifier(url, timeout_s=60)
    for i in range(5):
        client.predict(images[i % len(images)][None])
    times = []
    for i in range(n):
        start = time.perf_counter()
        client.predict(images[i % len(images)][None])
        times.append(time.perf_counter() - start)
    client.close()
    return _percentiles(times)


def throughput(url: str, images: np.ndarray, clients: int, per_client: int) -> dict[str, float]:
    """``clients`` threads, each sending ``per_client`` single-image requests back to back."""
    barrier = threading.Barrier(clients + 1)
    times: list[float] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        client = TritonClassifier(url, timeout_s=120)
        client.predict(images[k % len(images)][None])  # connect before the clock starts
        barrier.wait()
        mine = []
        for i in range(per_client):
            start = time.perf_counter()
            client.predict(images[(k + i) % len(images)][None])
            mine.append(time.perf_counter() - start)
        with lock:
            times.extend(mine)
        client.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    inferences0, executions0 = _stats(url)
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    inferences, executions = _stats(url)
    return {
        "images_per_s": clients * per_client / elapsed,
        "mean_batch": (inferences - inferences0) / max(1, executions - executions0),
        **_percentiles(times),
    }


def run(
    clients: int = 8,
    per_client: int = 40,
    latency_requests: int = 60,
    torch_threads: int = 1,
    images_dir: Path | None = None,
) -> dict:
    """All figures as a dict: ``{"dynamic_batching": {...}, "no_batching": {...}, ...}``."""
    spec = models.get_spec(MODEL)
    size = spec.input_size
    images = parity_batch(images_dir or default_parity_dir(), size, n=16)
    out: dict = {
        "model": MODEL,
        "input_size": list(size),
        "clients": clients,
        "requests": clients * per_client,
        "torch_threads": torch_threads,
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        export_model(models.create_classifier(MODEL).eval(), repo, size, images[:8])
        for mode, dynamic in (("dynamic_batching", True), ("no_batching", False)):
            cache = Path(tmp) / mode
            with run_triton(
                repo, cache_dir=cache, dynamic_batching=dynamic, torch_threads=torch_threads
            ) as server:
                out[mode] = {
                    "latency_batch1": latency(server.grpc_url, images, latency_requests),
                    "concurrent": throughput(server.grpc_url, images, clients, per_client),
                }
    return out


def markdown(res: dict) -> str:
    lines = [
        f"Triton 2.51 (Python backend, 1 CPU instance, {res['torch_threads']} torch thread(s)), "
        f"{res['model']} at {res['input_size'][0]}x{res['input_size'][1]}, gRPC on 127.0.0.1; "
        f"{res['machine']}.",
        "",
        f"| mode | batch-1 p50 / p95 ms | {res['clients']} clients: img/s | p50 / p95 ms "
        "| mean batch |",
        "|---|---|---|---|---|",
    ]
    for mode in ("dynamic_batching", "no_batching"):
        lat, con = res[mode]["latency_batch1"], res[mode]["concurrent"]
        lines.append(
            f"| {mode.replace('_', ' ')} | {lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} | "
            f"{con['images_per_s']:.0f} | {con['p50_ms']:.1f} / {con['p95_ms']:.1f} | "
            f"{con['mean_batch']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
