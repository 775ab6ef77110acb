"""The gateway's own cost: requests/s and p50/p99 latency at concurrency 1, 8 and 32 with real
full-size photos, beside Triton called directly in the same run.

Through the gateway a request is the whole path: multipart upload of a 600x450 JPEG, API key,
decode, resize, gRPC to Triton, rules, referral, a committed SQLite (WAL) record, JSON answer.
Directly, Triton gets the already-resized ``uint8`` tensor over gRPC. The ratio of the two is
what the gateway costs. The model is ``compact_cnn`` (untrained: speed is the same) exported by
``training.export`` into a temporary repository, served by the real tritonserver (one CPU
instance, dynamic batching as in production). The gateway runs as ``python -m serving`` (one
uvicorn worker) and the load generator in a separate process, all on 127.0.0.1; every level
sends a bounded number of requests after a short warm-up.

    python -m benchmarks.gateway_bench [--requests 200] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "compact_cnn"
SITES = ("back", "face", "lower extremity", "trunk", "unknown")


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


async def _drive(send: Any, concurrency: int, n: int, warmup: int) -> dict[str, float]:
    """``concurrency`` workers share ``warmup + n`` requests; only the last ``n`` are timed."""
    for i in range(warmup):
        await send(i)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            ok = await send(i)
            latencies.append(time.perf_counter() - start)
            errors += not ok

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(latencies, time.perf_counter() - start, errors)


def load_gateway(url: str, key: str, photos: list[bytes], concurrency: int, n: int) -> dict:
    """Load generator for the gateway (runs in its own process)."""

    async def main() -> dict[str, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=120
        ) as client:

            async def send(i: int) -> bool:
                r = await client.post(
                    "/v1/predictions",
                    data={"body_location": SITES[i % len(SITES)]},
                    files={"image": ("lesion.jpg", photos[i % len(photos)], "image/jpeg")},
                )
                return r.status_code == 201

            return await _drive(send, concurrency, n, warmup=2 * concurrency)

    return asyncio.run(main())


def load_triton(url: str, images: np.ndarray, concurrency: int, n: int) -> dict:
    """Load generator for Triton directly, same shape of load (runs in its own process)."""
    from serving.triton_client import AsyncTritonClassifier

    async def main() -> dict[str, float]:
        async with AsyncTritonClassifier(url, timeout_s=120) as client:

            async def send(i: int) -> bool:
                out = await client.predict(images[i % len(images)][None])
                return out.shape == (1, 7)

            return await _drive(send, concurrency, n, warmup=2 * concurrency)

    return asyncio.run(main())


def _start_gateway(tmp: Path, triton_url: str, repo: Path, key: str) -> tuple[Any, str]:
    from serving.security import hash_key
    from serving.triton.server import free_port

    port = free_port()
    env = {
        **os.environ,
        "SKIN_PORT": str(port),
        "SKIN_TRITON_URL": triton_url,
        "SKIN_MODEL_REPOSITORY": str(repo),
        "SKIN_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "SKIN_API_KEY_HASHES": hash_key(key),
        "SKIN_RULES_PATH": str(ROOT / "configs" / "body_location_rules.yaml"),
        "SKIN_LOG_LEVEL": "warning",
        "SKIN_RATE_LIMIT_PER_S": "0",  # one key sends all: measure the gateway, not the limit
    }
    proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=tmp, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the gateway did not become ready within 120 s")


def run(
    concurrencies: tuple[int, ...] = (1, 8, 32),
    requests: int = 200,
    images_dir: Path | None = None,
) -> dict[str, Any]:
    """Start Triton and the gateway, load both at each concurrency; all figures as a dict."""
    import models
    from benchmarks.common import machine
    from serving.triton.server import run_triton
    from training.data import read_image
    from training.export import default_parity_dir, export_model, parity_batch
    from training.transforms import eval_resize

    size = models.get_spec(MODEL).input_size
    folder = Path(images_dir or default_parity_dir())
    paths = sorted(folder.glob("*.jpg"))
    photos = [p.read_bytes() for p in paths]
    kib = np.mean([len(p) for p in photos]) / 1024
    resized = np.stack([eval_resize(read_image(str(p)), size) for p in paths])
    out: dict[str, Any] = {
        "model": MODEL,
        "input_size": list(size),
        "photos": f"{len(photos)} JPEGs from {folder.name} ({kib:.0f} KiB mean)",
        "requests_per_level": requests,
        "machine": machine(),
        "levels": [],
    }
    spawn = multiprocessing.get_context("spawn")
    key = "bench-" + os.urandom(16).hex()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        export_model(models.create_classifier(MODEL).eval(), repo, size, parity_batch(folder, size))
        with run_triton(repo, cache_dir=tmp / "triton") as server:
            gateway, url = _start_gateway(tmp, server.grpc_url, repo, key)
            try:
                with spawn.Pool(1) as pool:
                    for c in concurrencies:
                        via = pool.apply(load_gateway, (url, key, photos, c, requests))
                        direct = pool.apply(load_triton, (server.grpc_url, resized, c, requests))
                        out["levels"].append(
                            {
                                "concurrency": c,
                                "gateway": via,
                                "triton": direct,
                                "rps_ratio": via["rps"] / direct["rps"],
                                "p50_overhead_ms": via["p50_ms"] - direct["p50_ms"],
                            }
                        )
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"{res['model']} at {res['input_size'][0]}x{res['input_size'][1]}, {res['photos']}, "
        f"{res['requests_per_level']} requests per level; {res['machine']}.",
        "",
        "| concurrency | gateway req/s | p50 / p99 ms | Triton direct req/s | p50 / p99 ms "
        "| gateway/Triton req/s | p50 overhead ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in res["levels"]:
        g, t = lv["gateway"], lv["triton"]
        lines.append(
            f"| {lv['concurrency']} | {g['rps']:.1f} | {g['p50_ms']:.1f} / {g['p99_ms']:.1f} | "
            f"{t['rps']:.1f} | {t['p50_ms']:.1f} / {t['p99_ms']:.1f} | {lv['rps_ratio']:.2f} | "
            f"{lv['p50_overhead_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway_bench", description=__doc__)
    p.add_argument("--requests", type=int, default=200, help="timed requests per level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images", type=Path, help="folder of JPEGs (default: REAL_LESIONS_DIR)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    res = run(tuple(args.concurrency), args.requests, args.images)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
