"""Soak the gateway: many uploads at a fixed concurrency, errors counted, the gateway's memory
(RSS from /proc) followed, and every answered prediction looked up in the database.

    python -m benchmarks.load_soak --requests 10000 --concurrency 32 [--json out.json]

The real path end to end on 127.0.0.1: ``compact_cnn`` (untrained; its speed is what counts)
exported by ``training.export`` and served by the real tritonserver, the gateway as
``python -m serving`` (one uvicorn worker, SQLite WAL), and real full-size photos
(REAL_LESIONS_DIR) uploaded by a load generator in this process. The rate limit is switched
off: one key sends everything, and the soak measures the gateway, not the limiter.
``LoadLoop`` and ``start_gateway_process`` also serve tests/reliability.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITES = ("back", "face", "lower extremity", "trunk", "unknown")


@dataclass
class LoadResult:
    """What a load run saw: status counts, ids of the 201 answers, latencies, failures."""

    statuses: Counter = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # transport errors and 5xx, in brief
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


class LoadLoop:
    """``concurrency`` workers uploading photos in a background thread, until ``requests``
    were sent or :meth:`stop` is called. Status 0 in ``statuses`` is a transport error."""

    def __init__(
        self,
        url: str,
        key: str,
        photos: list[bytes],
        concurrency: int = 8,
        requests: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url, self.key, self.photos = url, key, photos
        self.concurrency, self.requests, self.timeout_s = concurrency, requests, timeout_s
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def done(self) -> int:
        return self.result.sent

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> LoadLoop:
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> LoadResult:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the load did not finish within {timeout_s} s")
        return self.result

    def stop(self) -> LoadResult:
        self._stop.set()
        return self.wait(self.timeout_s + 10)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        started = iter(range(self.requests if self.requests is not None else sys.maxsize))
        start = time.perf_counter()
        async with httpx.AsyncClient(
            base_url=self.url,
            headers={"X-API-Key": self.key},
            limits=limits,
            timeout=self.timeout_s,
        ) as client:

            async def worker() -> None:
                for i in started:
                    if self._stop.is_set():
                        return
                    await self._send(client, i)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.result.elapsed_s = time.perf_counter() - start

    async def _send(self, client: httpx.AsyncClient, i: int) -> None:
        res, t0 = self.result, time.perf_counter()
        try:
            r = await client.post(
                "/v1/predictions",
                data={"body_location": SITES[i % len(SITES)], "age": str(20 + i % 60)},
                files={"image": ("lesion.jpg", self.photos[i % len(self.photos)], "image/jpeg")},
            )
        except httpx.HTTPError as e:
            res.statuses[0] += 1
            res.failures.append(f"{type(e).__name__} after {time.perf_counter() - t0:.1f} s")
            return
        res.latencies.append(time.perf_counter() - t0)
        res.statuses[r.status_code] += 1
        if r.status_code == 201:
            res.ids.append(r.json()["id"])
        elif r.status_code >= 500:
            res.failures.append(f"{r.status_code} {r.text[:120]}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_gateway_process(
    env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """``python -m serving`` with ``SKIN_*`` settings in ``env`` (``SKIN_PORT`` included);
    stdout and stderr go to ``log_path``. Returns the process and its URL once /healthz
    answers (Triton may not be ready yet)."""
    url = f"http://127.0.0.1:{env['SKIN_PORT']}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the gateway exited with status {proc.returncode}; log {log_path}:\n"
                + log_path.read_text()[-3000:]
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the gateway did not answer within {timeout_s:.0f} s; log {log_path}")


def missing_records(database: Path, ids: list[str]) -> int:
    """How many of ``ids`` have no row in the predictions table of a SQLite file."""
    import sqlite3

    with sqlite3.connect(database) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM predictions")}
    return len(set(ids) - stored)


def soak(requests: int, concurrency: int, images: Path | None = None) -> dict[str, Any]:
    """Start Triton and the gateway, send ``requests`` uploads; every figure in a dict."""
    import models
    from benchmarks.common import machine
    from serving.security import hash_key
    from serving.triton.ports import free_port
    from serving.triton.server import run_triton
    from training.export import default_parity_dir, export_model, parity_batch

    folder = Path(images or default_parity_dir())
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    key = "soak-" + os.urandom(16).hex()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        size = models.get_spec("compact_cnn").input_size
        net = models.create_classifier("compact_cnn").eval()
        export_model(net, tmp / "repo", size, parity_batch(folder, size))
        with run_triton(tmp / "repo", cache_dir=tmp / "triton") as triton:
            env = {
                "SKIN_PORT": str(free_port()),
                "SKIN_TRITON_URL": triton.grpc_url,
                "SKIN_MODEL_REPOSITORY": str(tmp / "repo"),
                "SKIN_DATABASE_URL": f"sqlite:///{tmp / 'soak.db'}",
                "SKIN_API_KEY_HASHES": hash_key(key),
                "SKIN_RULES_PATH": str(ROOT / "configs" / "body_location_rules.yaml"),
                "SKIN_LOG_LEVEL": "warning",
                "SKIN_RATE_LIMIT_PER_S": "0",
            }
            gateway, url = start_gateway_process(env, tmp, tmp / "gateway.log")
            try:
                rss = [(0, rss_mib(gateway.pid))]
                loop = LoadLoop(url, key, photos, concurrency, requests, timeout_s=60).start()
                step = max(requests // 20, 1)
                while loop.running:
                    if loop.done >= rss[-1][0] + step:
                        rss.append((loop.done, rss_mib(gateway.pid)))
                    time.sleep(0.2)
                res = loop.wait()
                rss.append((res.sent, rss_mib(gateway.pid)))
                lost = missing_records(tmp / "soak.db", res.ids)
            finally:
                gateway.terminate()
                gateway.wait(30)
    ms = np.asarray(res.latencies) * 1000
    return {
        "machine": machine(),
        "photos": f"{len(photos)} JPEGs from {folder.name}",
        "requests": res.sent,
        "concurrency": concurrency,
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "errors": res.sent - res.statuses[201],
        "failures": res.failures[:10],
        "duration_s": round(res.elapsed_s, 1),
        "rps": round(res.sent / res.elapsed_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        **memory_figures(rss),
        "records_missing": lost,
    }


def memory_figures(rss: list[tuple[int, float]]) -> dict[str, Any]:
    """RSS at start, after warm-up (10% of the requests), at the end of the load and after it,
    and the trend under load: a least-squares slope in MiB per 1,000 requests from warm-up on
    (a leak shows as a steady positive slope; the allocator's ups and downs do not)."""
    total = rss[-1][0]
    loaded = [(n, m) for n, m in rss[:-1] if n >= total // 10] or rss
    n, m = np.array(loaded, dtype=float).T
    slope = float(np.polyfit(n, m, 1)[0] * 1000) if len(n) > 2 else 0.0
    return {
        "rss_start_mib": round(rss[0][1], 1),
        "rss_after_warmup_mib": round(loaded[0][1], 1),
        "rss_end_of_load_mib": round(loaded[-1][1], 1),
        "rss_after_load_mib": round(rss[-1][1], 1),
        "rss_peak_mib": round(max(m for _, m in rss), 1),
        "rss_slope_mib_per_1k": round(slope, 2),
        "rss_samples": [(k, round(v, 1)) for k, v in rss],
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['requests']} uploads at concurrency {r['concurrency']} ({r['photos']}) in "
            f"{r['duration_s']} s; {r['machine']}.",
            "",
            "| requests | errors | req/s | p50 / p99 ms | RSS MiB: start / after warm-up / "
            "end of load / peak | trend under load | records missing |",
            "|---|---|---|---|---|---|---|",
            f"| {r['requests']} | {r['errors']} | {r['rps']} | {r['p50_ms']} / {r['p99_ms']} | "
            f"{r['rss_start_mib']} / {r['rss_after_warmup_mib']} / {r['rss_end_of_load_mib']} / "
            f"{r['rss_peak_mib']} | {r['rss_slope_mib_per_1k']:+} MiB per 1,000 requests | "
            f"{r['records_missing']} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_soak", description=__doc__)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--images", type=Path, help="folder of JPEGs (default: REAL_LESIONS_DIR)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    res = soak(args.requests, args.concurrency, args.images)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0 if res["errors"] == 0 and res["records_missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
