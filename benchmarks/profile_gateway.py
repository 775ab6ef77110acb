"""Where the gateway's CPU goes: py-spy samples the running gateway under load.

Starts the real Triton and ``python -m serving`` as ``gateway_bench`` does, warms up, then
records the gateway process with ``py-spy record`` (native frames off, no line numbers; samples
of threads that only wait are dropped when parsed) while the load generator sends
``--requests`` uploads of the real 600x450 photos at ``--concurrency``. Prints the CPU time
per request of each process and the functions with the largest inclusive and own share of the
gateway's samples, as markdown, and keeps the raw collapsed stacks (``--raw``) for a flame
graph (``flamegraph.pl`` or speedscope.app read them).

    python -m benchmarks.profile_gateway [--requests 600] [--concurrency 8] [--raw FILE] [--gil]

``--gil`` samples only the thread holding the GIL: the Python work of the process, without the
time threads spend waiting or in C code that releases the GIL (the JPEG decode, SQLite, gRPC's
core); the shares then say where the interpreter's time goes.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gateway_bench import MODEL, _start_gateway, load_http, tree_cpu_s

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
# Leaves where a thread only waits (py-spy on this kernel counts some of them as active).
_IDLE = ("Condition.wait (", "Event.wait (", "Queue.get (", "select (", "poll (")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread group of ``pid``: ``event loop`` (the main
    thread), ``worker threads`` (Python threads: anyio's pool for decoding and the database),
    and the others by their name (gRPC's own threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if task.name == str(pid):
            name = "event loop"
        elif name.startswith("python"):
            name = "worker threads"
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy (in the dev extra)")
    return found


def parse(raw: str) -> dict[str, Any]:
    """Collapsed stacks -> total samples, inclusive and own samples per function."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        count = int(m["count"])
        frames = [f for f in m["stack"].split(";") if "(" in f]  # drop process/thread names
        if not frames or frames[-1].startswith(_IDLE):
            continue
        total += count
        for f in set(frames):
            inclusive[f] += count
        own[frames[-1]] += count
    return {"total": total, "inclusive": inclusive, "own": own}


def run(  # noqa: PLR0913 (the profile's knobs, each with a default)
    requests: int = 600,
    concurrency: int = 8,
    model: str = MODEL,
    raw_path: Path | None = None,
    instances: int = 2,
    torch_threads: int = 1,
    gil: bool = False,
) -> dict[str, Any]:
    import models
    from serving.triton.server import TritonOptions, run_triton
    from training.export import default_parity_dir, export_model, parity_batch

    size = models.get_spec(model).input_size
    folder = default_parity_dir()
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    key = "bench-" + os.urandom(16).hex()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        export_model(models.create_classifier(model).eval(), repo, size, parity_batch(folder, size))
        with run_triton(
            repo,
            cache_dir=tmp / "triton",
            options=TritonOptions(instances=instances, torch_threads=torch_threads),
        ) as server:
            gateway, url = _start_gateway(tmp, server.grpc_url, repo, key)
            raw = tmp / "stacks.txt"
            try:
                with spawn.Pool(1) as pool:
                    pool.apply(load_http, (url, "/v1/predictions", key, photos, concurrency, 64))
                    spy = subprocess.Popen(
                        [
                            *(_py_spy(), "record", "--pid", str(gateway.pid), "--format", "raw"),
                            *("--rate", "250", "--nolineno", "--output", str(raw)),
                            *(["--gil"] if gil else []),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    time.sleep(1.0)  # py-spy attaches
                    procs = {"gateway": gateway.pid, "Triton": server.process.pid}
                    before = {k: tree_cpu_s(v) for k, v in procs.items()}
                    threads_before = thread_cpu_s(gateway.pid)
                    load = pool.apply(
                        load_http, (url, "/v1/predictions", key, photos, concurrency, requests)
                    )
                    cpu = {k: tree_cpu_s(v) - before[k] for k, v in procs.items()}
                    threads = {
                        k: v - threads_before.get(k, 0.0)
                        for k, v in thread_cpu_s(gateway.pid).items()
                    }
                    spy.send_signal(signal.SIGINT)
                    _, err = spy.communicate(timeout=60)
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
            if not raw.exists():
                raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")
            text = raw.read_text()
            if raw_path:
                raw_path.write_text(text)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "model": model,
        "triton": f"{instances} instance(s) x {torch_threads} thread(s)",
        "gil": gil,
        "load": load,
        "cpu_ms_per_request": {
            **{k: 1000 * v / requests for k, v in cpu.items()},
            "load generator": 1000 * load["cpu_s"] / requests,
        },
        "gateway_threads_ms_per_request": {
            k: 1000 * v / requests for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v
        },
        **parse(text),
    }


def _ours(frame: str) -> bool:
    """A function of this project's request path (not the entry point)."""
    return ("(serving/" in frame or "(training/" in frame) and "__main__" not in frame


def markdown(res: dict[str, Any], top: int = 20) -> str:
    total = res["total"]
    load = res["load"]
    lines = [
        "py-spy on the gateway process (250 Hz; "
        + (
            "only the thread holding the GIL"
            if res.get("gil")
            else "samples where a thread only waits dropped"
        )
        + "), "
        f"{res['requests']} uploads at concurrency {res['concurrency']} ({load['rps']:.1f} "
        f"req/s while sampled, p50 {load['p50_ms']:.0f} ms), {res['model']}; {total} samples. "
        "CPU time per request (user + system, from /proc, py-spy's own cost excluded): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in res["cpu_ms_per_request"].items())
        + ". The gateway's CPU per request by thread: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in res["gateway_threads_ms_per_request"].items())
        + ". Shares of the gateway's busy samples; the project's own functions:",
        "",
        "| function | inclusive % | own % |",
        "|---|---|---|",
    ]
    ours = [(f, n) for f, n in res["inclusive"].most_common() if _ours(f)][:top]
    for name, n in ours:
        lines.append(
            f"| `{name}` | {100 * n / total:.1f} | {100 * res['own'].get(name, 0) / total:.1f} |"
        )
    lines += ["", "Largest own time:", "", "| function | own % |", "|---|---|"]
    for name, n in res["own"].most_common(top // 2):
        lines.append(f"| `{name}` | {100 * n / total:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_gateway", description=__doc__)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--top", type=int, default=20, help="functions to list")
    p.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    p.add_argument("--instances", type=int, default=2, help="Triton CPU instances")
    p.add_argument("--torch-threads", type=int, default=1, help="threads per Triton instance")
    p.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    args = p.parse_args(argv)
    res = run(
        args.requests,
        args.concurrency,
        args.model,
        args.raw,
        args.instances,
        args.torch_threads,
        args.gil,
    )
    print(markdown(res, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
