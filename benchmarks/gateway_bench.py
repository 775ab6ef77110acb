"""Serving end to end with real full-size photos, four ways, at concurrency 1, 8 and 32:

- **gateway**: ``python -m serving`` (one uvicorn worker) with the real Triton behind it. A
  request is the whole path: multipart upload of a 600x450 JPEG, API key, decode, resize,
  gRPC to Triton, rules, referral, a committed SQLite (WAL) record, the JSON answer.
- **eager baseline**: what most tutorials build, ``benchmarks.eager_app``: one FastAPI process
  running the eager PyTorch model in its handler per request (same decode and resize).
- **Triton direct, client decodes**: the load generator decodes and resizes the same JPEG with
  the gateway's own ``prepare_image`` and calls Triton over gRPC: the same necessary work
  without the gateway, so ``gateway / this`` is the gateway's own overhead.
- **Triton direct, tensor**: the already-resized ``uint8`` tensor over gRPC: Triton alone.

The model is the production one, ``efficientnet_lite0`` (untrained weights: speed is the same),
exported by ``training.export`` into a temporary repository and served by the real
tritonserver (dynamic batching as in production; two CPU instances of one thread, the fastest
mode in the Triton section). Everything runs on 127.0.0.1 on this
machine, the load generator in its own process; each level sends a bounded number of requests
after a warm-up, and is repeated: figures are medians with the spread (min-max) over repeats.

    python -m benchmarks.gateway_bench [--requests 200] [--repeats 3] [--concurrency 1 8 32]

Before and after a change, in one run: ``--baseline DIR`` adds a fifth target, the gateway
started from another checkout of the project (e.g. ``git worktree add /tmp/before HEAD``) with
``PYTHONPATH=DIR``, against the same Triton, interleaved with the others; ``--targets`` runs a
subset (``gateway baseline direct_decode``); ``--also DIR...`` loads more checkouts alike (the
steps between before and after), each a target named ``tree:<folder name>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

if TYPE_CHECKING:
    from serving.triton.server import TritonOptions

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
SITES = ("back", "face", "lower extremity", "trunk", "unknown")
TARGETS = {
    "gateway": "gateway + Triton",
    "eager": "eager FastAPI baseline",
    "direct_decode": "Triton direct, client decodes",
    "direct_tensor": "Triton direct, tensor",
    "baseline": "gateway (baseline checkout) + Triton",
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(latencies: list[float], elapsed: float, errors: int, cpu_s: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "cpu_s": cpu_s,  # the load generator's own CPU time over the timed requests
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

    cpu0, start = _cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(latencies, time.perf_counter() - start, errors, _cpu_s() - cpu0)


def load_http(
    url: str, path: str, key: str | None, photos: list[bytes], concurrency: int, n: int
) -> dict:
    """Load generator for an HTTP upload endpoint (runs in its own process)."""
    expected = 201 if path == "/v1/predictions" else 200

    async def main() -> dict[str, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"X-API-Key": key} if key else {}
        async with httpx.AsyncClient(
            base_url=url, headers=headers, limits=limits, timeout=120
        ) as client:

            async def send(i: int) -> bool:
                r = await client.post(
                    path,
                    data={"body_location": SITES[i % len(SITES)]},
                    files={"image": ("lesion.jpg", photos[i % len(photos)], "image/jpeg")},
                )
                return r.status_code == expected

            return await _drive(send, concurrency, n, warmup=2 * concurrency)

    return asyncio.run(main())


def load_triton(
    url: str,
    payload: list[bytes] | np.ndarray,
    size: list[int],
    clinical: bool,
    concurrency: int,
    n: int,
) -> dict:
    """Load generator for Triton directly (own process): tensors, or JPEGs it decodes itself
    with the gateway's ``prepare_image`` in a worker thread, as the gateway does. ``clinical``:
    the model is a fusion version, sent the encoding of no known field with each image, as the
    gateway sends for an upload without patient metadata."""
    import anyio.to_thread

    from contracts.clinical import UNKNOWN
    from contracts.images import prepare_image
    from serving.settings import Settings
    from serving.triton.client import AsyncTritonClassifier

    decode = isinstance(payload, list)
    rows = UNKNOWN[None] if clinical else None
    max_pixels = Settings.model_fields["max_pixels"].default

    async def main() -> dict[str, float]:
        async with AsyncTritonClassifier(url, timeout_s=120) as client:

            async def send(i: int) -> bool:
                item = payload[i % len(payload)]
                if decode:
                    prepared = await anyio.to_thread.run_sync(
                        prepare_image, item, tuple(size), max_pixels
                    )
                    item = prepared.model_input
                out = await client.predict(item[None], clinical=rows)
                return out.shape == (1, 7)

            return await _drive(send, concurrency, n, warmup=2 * concurrency)

    return asyncio.run(main())


def _wait_ready(proc: subprocess.Popen, url: str, what: str) -> None:
    from tools.stack import wait_ready

    try:
        wait_ready(url, proc, timeout_s=300, what=what)
    except RuntimeError:
        _stop(proc)
        raise


def _start_gateway(
    tmp: Path, triton_url: str, repo: Path, key: str, code: Path | None = None
) -> tuple[Any, str]:
    """``python -m serving`` in ``tmp`` (its SQLite file there); ``code``: run that checkout's
    gateway instead of this one (``PYTHONPATH``)."""
    from serving.security import hash_key
    from serving.triton.ports import free_port

    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **({"PYTHONPATH": str(code)} if code else {}),
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
    _wait_ready(proc, url, "gateway")
    return proc, url


def _start_eager(model: str, size: tuple[int, int]) -> tuple[Any, str]:
    from serving.triton.ports import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.eager_app:app", "--port", str(port)]
    env = {**os.environ, "EAGER_MODEL": model, "EAGER_SIZE": f"{size[0]}x{size[1]}"}
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, "eager baseline")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _level(pool: Any, jobs: dict[str, Any], c: int, requests: int, repeats: int) -> dict:
    """Every target at concurrency ``c``, repeats interleaved so drift hits all alike."""
    level: dict[str, Any] = {"concurrency": c}
    runs: dict[str, list] = {t: [] for t in jobs}
    for _ in range(repeats):
        for target, (fn, args, pids) in jobs.items():
            before = {k: tree_cpu_s(pid) for k, pid in pids.items()}
            res = pool.apply(fn, (*args, c, requests))
            res["server_cpu_ms"] = {
                k: 1000 * (tree_cpu_s(pid) - before[k]) / requests for k, pid in pids.items()
            }
            runs[target].append(res)
    for target in jobs:
        level[target] = _median(runs[target])
    trees = [t for t in jobs if t.startswith("tree:")]
    for other in ("direct_decode", "direct_tensor", "eager", "baseline", *trees):
        if "gateway" in level and other in level:
            level[f"gateway_vs_{other}"] = level["gateway"]["rps"] / level[other]["rps"]
    return level


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Triton's Python backend
    runs each model instance in a child stub process)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(stats.get(member, (0, 0.0))[1] for member in tree)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs, "errors": sum(r["errors"] for r in runs)}
    out["cpu_ms"] = {
        k: statistics.median(r["server_cpu_ms"][k] for r in runs) for k in runs[0]["server_cpu_ms"]
    }
    out["cpu_ms"]["load generator"] = statistics.median(
        1000 * r["cpu_s"] / r["requests"] for r in runs
    )
    for k in ("rps", "p50_ms", "p99_ms"):
        vals = [r[k] for r in runs]
        out[k] = statistics.median(vals)
        out[f"{k}_range"] = [min(vals), max(vals)]
    return out


def run(  # noqa: PLR0913 (the benchmark's knobs, each with a default)
    concurrencies: tuple[int, ...] = (1, 8, 32),
    requests: int = 200,
    repeats: int = 3,
    images_dir: Path | None = None,
    model: str = MODEL,
    triton: TritonOptions | None = None,
    repository: Path | None = None,
    targets: tuple[str, ...] = ("gateway", "eager", "direct_decode", "direct_tensor"),
    baseline: Path | None = None,
    also: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Start Triton, the gateway and the eager baseline; load each at each concurrency.

    ``triton``: how Triton runs the model; default two CPU instances of one thread each.
    ``repository``: a model's folder (``<repo>/skin_lesion``) to serve as it is, e.g. a trained
    version (benchmarks/gpu.py); default: ``model`` untrained, exported here. The eager
    baseline always runs one network untrained at the served input size: the served one when
    it is a registered model, else ``model`` (an exported TTA or ensemble is several).
    ``targets``: which of :data:`TARGETS` to load; ``baseline``: the checkout the ``baseline``
    target runs.
    """
    if baseline is not None and "baseline" not in targets:
        targets = (*targets, "baseline")
    if "baseline" in targets and baseline is None:
        raise ValueError("the baseline target needs a checkout: pass baseline=DIR")
    import models
    from benchmarks.common import machine
    from contracts.images import eval_resize, read_image
    from contracts.metadata import METADATA_FILE, read_metadata
    from contracts.repository import model_dirs, served_version
    from serving.triton.render import AUTO_RUNTIME, auto_runtime
    from serving.triton.server import TritonOptions, run_triton
    from training.export import default_parity_dir, export_model, parity_batch

    triton = triton or TritonOptions(instances=2, runtime=AUTO_RUNTIME)
    size = models.get_spec(model).input_size
    clinical = False
    if repository is not None:
        served = read_metadata(repository / str(served_version(repository)) / METADATA_FILE)
        size, clinical = served.input_size, served.has_clinical_input
        if served.model_name in models.list_models():  # not for tta(...), ensemble(...)
            model = served.model_name
    folder = Path(images_dir or default_parity_dir())
    paths = sorted(folder.glob("*.jpg"))
    photos = [p.read_bytes() for p in paths]
    kib = np.mean([len(p) for p in photos]) / 1024
    resized = np.stack([eval_resize(read_image(str(p)), size) for p in paths])
    out: dict[str, Any] = {
        "model": model if repository is None else f"{served.model_name} ({repository})",
        "input_size": list(size),
        "photos": f"{len(photos)} JPEGs from {folder.name} ({kib:.0f} KiB mean)",
        "requests_per_level": requests,
        "repeats": repeats,
        "machine": machine(),
        "levels": [],
    }
    spawn = multiprocessing.get_context("spawn")
    key = "bench-" + os.urandom(16).hex()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        if repository is None:
            batch = parity_batch(folder, size)
            export_model(models.create_classifier(model).eval(), repo, size, batch)
        else:
            shutil.copytree(repository, repo / repository.name)
        runtime = triton.runtime
        if runtime == AUTO_RUNTIME:  # say what it chooses
            runtime += ": " + ", ".join(auto_runtime(m, triton.device) for m in model_dirs(repo))
        out["triton"] = (
            f"{triton.instances} {triton.device.upper()} instance(s) x "
            f"{triton.torch_threads} thread(s), {runtime} runtime"
        )
        with (
            run_triton(repo, cache_dir=tmp / "triton", options=triton) as server,
            contextlib.ExitStack() as procs,
        ):
            grpc = server.grpc_url
            triton_pid = server.process.pid
            # target -> (load function, its arguments, the server processes it loads)
            jobs: dict[str, tuple[Any, tuple[Any, ...], dict[str, int]]] = {}
            if "gateway" in targets:
                gateway, url = _start_gateway(tmp, grpc, repo, key)
                procs.callback(_stop, gateway)
                jobs["gateway"] = (
                    load_http,
                    (url, "/v1/predictions", key, photos),
                    {"gateway": gateway.pid, "Triton": triton_pid},
                )
            if "eager" in targets:
                eager, eager_url = _start_eager(model, size)
                procs.callback(_stop, eager)
                jobs["eager"] = (
                    load_http, (eager_url, "/predict", None, photos), {"eager": eager.pid}
                )  # fmt: skip
            if "baseline" in targets:
                before, before_url = _start_gateway(tmp / "baseline", grpc, repo, key, baseline)
                procs.callback(_stop, before)
                jobs["baseline"] = (
                    load_http,
                    (before_url, "/v1/predictions", key, photos),
                    {"gateway": before.pid, "Triton": triton_pid},
                )
                out["baseline"] = str(baseline)
            for tree in also:
                proc, tree_url = _start_gateway(tmp / f"tree-{tree.name}", grpc, repo, key, tree)
                procs.callback(_stop, proc)
                jobs[f"tree:{tree.name}"] = (
                    load_http,
                    (tree_url, "/v1/predictions", key, photos),
                    {"gateway": proc.pid, "Triton": triton_pid},
                )
            everything = {
                "direct_decode": (
                    load_triton,
                    (grpc, photos, list(size), clinical),
                    {"Triton": triton_pid},
                ),
                "direct_tensor": (
                    load_triton,
                    (grpc, resized, list(size), clinical),
                    {"Triton": triton_pid},
                ),
            }
            jobs.update({t: job for t, job in everything.items() if t in targets})
            with spawn.Pool(1) as pool:
                for c in concurrencies:
                    out["levels"].append(_level(pool, jobs, c, requests, repeats))
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"{res['model']} at {res['input_size'][0]}x{res['input_size'][1]}, {res['photos']}, "
        f"{res['requests_per_level']} requests per level and target, {res['repeats']} "
        f"interleaved repeats (median, min-max); Triton: {res['triton']}; {res['machine']}.",
        "",
        "| concurrency | target | req/s | p50 ms | p99 ms | errors | CPU ms per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in res["levels"]:
        labels = {
            **TARGETS,
            **{t: f"gateway from {t[5:]} + Triton" for t in lv if t[:5] == "tree:"},
        }
        for target, label in labels.items():
            if target not in lv:
                continue
            r = lv[target]
            lo, hi = r["rps_range"]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms"].items())
            lines.append(
                f"| {lv['concurrency']} | {label} | {r['rps']:.1f} ({lo:.1f}-{hi:.1f}) | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {cpu} |"
            )
    if all(f"gateway_vs_{t}" in lv for lv in res["levels"] for t in RATIOS):
        lines += [
            "",
            "| concurrency | gateway / eager req/s | p99 gateway vs eager ms "
            "| gateway / direct (client decodes) | gateway / direct (tensor) |",
            "|---|---|---|---|---|",
        ]
        for lv in res["levels"]:
            lines.append(
                f"| {lv['concurrency']} | {lv['gateway_vs_eager']:.2f}x | "
                f"{lv['gateway']['p99_ms']:.0f} vs {lv['eager']['p99_ms']:.0f} | "
                f"{lv['gateway_vs_direct_decode']:.2f} | {lv['gateway_vs_direct_tensor']:.2f} |"
            )
    else:  # a subset of targets: the ratios it has
        lines += ["", "| concurrency | ratio | value |", "|---|---|---|"]
        for lv in res["levels"]:
            for name, value in lv.items():
                if name.startswith("gateway_vs_"):
                    lines.append(f"| {lv['concurrency']} | {name} | {value:.2f} |")
    return "\n".join(lines)


RATIOS = ("eager", "direct_decode", "direct_tensor")


def main(argv: list[str] | None = None) -> int:
    from serving.triton.render import AUTO_RUNTIME, RUNTIMES
    from serving.triton.server import TritonOptions

    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway_bench", description=__doc__)
    p.add_argument("--requests", type=int, default=200, help="timed requests per level")
    p.add_argument("--repeats", type=int, default=3, help="repeats per level and target")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--model", default=MODEL, help="registered model to serve")
    p.add_argument(
        "--repository",
        type=Path,
        help="a model's folder (<repo>/skin_lesion) to serve as it is, its served version, "
        "e.g. a trained ensemble; default: --model untrained, exported here",
    )
    p.add_argument("--instances", type=int, default=2, help="Triton CPU instances")
    p.add_argument("--torch-threads", type=int, default=1, help="threads per Triton instance")
    p.add_argument(
        "--runtime",
        choices=sorted([*RUNTIMES, AUTO_RUNTIME]),
        default=AUTO_RUNTIME,
        help="what Triton's Python backend runs (python -m serving.triton --runtime; auto: "
        "ONNX Runtime where the version has model.onnx, as make run serves)",
    )
    p.add_argument("--images", type=Path, help="folder of JPEGs (default: REAL_LESIONS_DIR)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--targets",
        nargs="+",
        choices=sorted(TARGETS),
        default=["gateway", "eager", "direct_decode", "direct_tensor"],
        help="which targets to load",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout whose gateway is loaded too, as the 'baseline' target",
    )
    p.add_argument(
        "--also", type=Path, nargs="+", default=[], help="more checkouts, each loaded too"
    )
    args = p.parse_args(argv)
    res = run(
        tuple(args.concurrency),
        args.requests,
        args.repeats,
        args.images,
        args.model,
        TritonOptions(
            instances=args.instances, torch_threads=args.torch_threads, runtime=args.runtime
        ),
        repository=args.repository,
        targets=tuple(args.targets),
        baseline=args.baseline,
        also=tuple(args.also),
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
