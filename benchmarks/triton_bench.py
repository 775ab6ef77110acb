"""The real Triton on this machine: batch-1 latency and throughput under concurrent clients,
side by side in one run.

Dynamic batching on and off, with one model instance of two torch threads and with two
instances of one thread each (this machine has two cores). The model is the production
``efficientnet_lite0`` at its default input size inside the exported wrapper (uint8 in,
probabilities out), exported by ``training.export`` into a temporary repository; the weights
are untrained, which changes nothing about speed. Each mode gets its own server, started and
stopped in turn so they never compete.

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
from contracts.tensors import DEFAULT_MODEL_NAME
from serving.triton.client import TritonClassifier
from serving.triton.server import TritonOptions, run_triton
from training.export import default_parity_dir, export_model, parity_batch

MODEL = "efficientnet_lite0"  # the production model


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


MODES = (
    # (label, dynamic batching, instances, torch threads per instance)
    ("dynamic batching, 1 instance x 2 threads", True, 1, 2),
    ("no batching, 1 instance x 2 threads", False, 1, 2),
    ("dynamic batching, 2 instances x 1 thread", True, 2, 1),
    ("no batching, 2 instances x 1 thread", False, 2, 1),
)


def run(
    clients: int = 8,
    per_client: int = 40,
    latency_requests: int = 60,
    repeats: int = 3,
    model: str = MODEL,
    images_dir: Path | None = None,
) -> dict:
    """All figures as a dict: ``{"modes": [{"label", "latency_batch1", "concurrent"}, ...]}``.

    Each mode gets its own server, started and stopped in turn so they never compete; the
    concurrent load is repeated ``repeats`` times (median and min-max reported).
    """
    spec = models.get_spec(model)
    size = spec.input_size
    images = parity_batch(images_dir or default_parity_dir(), size, n=16)
    out: dict = {
        "model": model,
        "input_size": list(size),
        "clients": clients,
        "requests": clients * per_client,
        "repeats": repeats,
        "machine": machine(),
        "modes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        export_model(models.create_classifier(model).eval(), repo, size, images[:8])
        for k, (label, dynamic, instances, threads) in enumerate(MODES):
            with run_triton(
                repo,
                cache_dir=Path(tmp) / f"mode{k}",
                options=TritonOptions(
                    dynamic_batching=dynamic, instances=instances, torch_threads=threads
                ),
            ) as server:
                runs = [
                    throughput(server.grpc_url, images, clients, per_client) for _ in range(repeats)
                ]
                rates = [r["images_per_s"] for r in runs]
                out["modes"].append(
                    {
                        "label": label,
                        "latency_batch1": latency(server.grpc_url, images, latency_requests),
                        "concurrent": {
                            "images_per_s": statistics.median(rates),
                            "range": [min(rates), max(rates)],
                            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                            "p95_ms": statistics.median(r["p95_ms"] for r in runs),
                            "mean_batch": statistics.median(r["mean_batch"] for r in runs),
                        },
                    }
                )
    return out


def markdown(res: dict) -> str:
    lines = [
        f"Triton 2.51 (Python backend on CPU), {res['model']} at "
        f"{res['input_size'][0]}x{res['input_size'][1]}, gRPC on 127.0.0.1, "
        f"{res['clients']} clients x {res['requests'] // res['clients']} single-image requests, "
        f"{res['repeats']} repeats (median, min-max); {res['machine']}.",
        "",
        f"| mode | batch-1 p50 / p95 ms | {res['clients']} clients: img/s | p50 / p95 ms "
        "| mean batch |",
        "|---|---|---|---|---|",
    ]
    for m in res["modes"]:
        lat, con = m["latency_batch1"], m["concurrent"]
        lo, hi = con["range"]
        lines.append(
            f"| {m['label']} | {lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} | "
            f"{con['images_per_s']:.0f} ({lo:.0f}-{hi:.0f}) | "
            f"{con['p50_ms']:.1f} / {con['p95_ms']:.1f} | {con['mean_batch']:.1f} |"
        )
    base = res["modes"][0]["concurrent"]["images_per_s"]
    ratios = ", ".join(
        f"{m['label']}: {m['concurrent']['images_per_s'] / base:.2f}x" for m in res["modes"][1:]
    )
    lines += ["", f"Throughput against {res['modes'][0]['label']}: {ratios}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
