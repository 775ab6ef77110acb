"""``python -m serving.triton``: serve ``model_repository/`` with the real Triton on this machine.

Renders the CPU variant under ``.cache/triton/repo``, starts ``tritonserver`` on Triton's own
ports (HTTP 8000, gRPC 8001, metrics 8002; a taken one is replaced by a free one, and said),
waits until the models are ready, prints the endpoints, and stops the server cleanly on Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from contracts.errors import ConfigError
from contracts.triton_config import ConfigFileError
from serving.triton.install import TritonServerError
from serving.triton.ports import TRITON_PORTS
from serving.triton.process import describe_exit
from serving.triton.render import AUTO_RUNTIME, DEVICES, RUNTIMES
from serving.triton.server import CPU_INSTANCES, TritonOptions, TritonServer
from serving.triton.state import DEFAULT_CACHE


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.triton", description=__doc__)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: all)")
    for name in ("grpc", "http", "metrics"):
        p.add_argument(
            f"--{name}-port",
            type=int,
            help=f"default: {TRITON_PORTS[name]} when free, else a free one; 0: a free one",
        )
    p.add_argument(
        "--instances",
        type=int,
        default=CPU_INSTANCES,
        help="CPU instances per model (2 instances x 1 thread: 1.29x the throughput of "
        "1 x 2 on a 2-core host, docs/benchmarks.md)",
    )
    p.add_argument("--torch-threads", type=int, default=1, help="threads per instance")
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument(
        "--runtime",
        choices=sorted([*RUNTIMES, AUTO_RUNTIME]),
        default=AUTO_RUNTIME,
        help="what the Python backend runs: model.pt (TorchScript, frozen on the CPU) or "
        "model.onnx (ONNX Runtime), or their reduced-precision copies model.bf16.pt / "
        "model.int8.onnx (python -m training.export.precision); auto (default): ONNX Runtime "
        "where every served version has model.onnx at one input size, else TorchScript",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the Python backend runs the model: the CPU, or GPU 0 (a CUDA machine)",
    )
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds")
    return p.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.instances < 1 or args.torch_threads < 1:
        print("error: --instances and --torch-threads must be at least 1", file=sys.stderr)
        return 2
    try:
        options = TritonOptions(
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            conventional_ports=True,
            instances=args.instances,
            dynamic_batching=not args.no_dynamic_batching,
            torch_threads=args.torch_threads,
            runtime=args.runtime,
            device=args.device,
            startup_timeout_s=args.startup_timeout,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = TritonServer(args.repository, cache_dir=args.cache_dir, options=options)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start()
        for note in server.port_notes:
            print(note, flush=True)
        print(
            f"Triton ready: gRPC {server.grpc_url}  HTTP {server.http_url}  "
            f"metrics {server.metrics_url}\nlog: {server.log_path}  (Ctrl-C stops it)",
            flush=True,
        )
        assert server.process is not None
        status = server.process.wait()
        print(
            f"error: tritonserver exited with {describe_exit(status)}; log:\n{server.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except (TritonServerError, ConfigFileError) as exc:  # ConfigFileError: a version's files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopping Triton ...", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
