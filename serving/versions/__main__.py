"""``python -m serving.versions``: list model versions, choose the served one, delete old ones.

    python -m serving.versions list
    python -m serving.versions promote 3      # serve version 3
    python -m serving.versions rollback       # serve the version served before
    python -m serving.versions delete 1       # remove a version that is not served

Promote and rollback write ``version_policy`` into the repository's ``config.pbtxt`` and tell
the running Triton to load the model again (gRPC ``load_model``): it switches versions without
a restart. The local server (``python -m serving.triton``) is found through
``.cache/triton/server.json`` and its CPU rendering refreshed; ``--triton-url`` names another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from contracts.repository import (
    VersionError,
    delete,
    list_versions,
    promote,
    rollback,
    served_version,
)
from contracts.tensors import DEFAULT_MODEL_NAME
from serving.triton.client import TritonClassifier, TritonError, load_models
from serving.triton.render import render_repository
from serving.triton.state import DEFAULT_CACHE, read_state


def parse_args(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repository", type=Path, default=Path("model_repository"))
    common.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name")
    common.add_argument("--triton-url", help="gRPC host:port (default: the local server's)")
    common.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="local server's")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds for a (re)load")
    p = argparse.ArgumentParser(prog="python -m serving.versions", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=[common], help="versions and which one is served")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("promote", parents=[common], help="serve VERSION").add_argument(
        "version", type=int
    )
    sub.add_parser("rollback", parents=[common], help="serve the previously served version")
    sub.add_parser(
        "delete", parents=[common], help="delete VERSION (not the served one)"
    ).add_argument("version", type=int)
    return p.parse_args(argv)


def _triton(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    state = read_state(args.cache_dir)
    ours = state and Path(state["repository"]) == args.repository.resolve()
    return args.triton_url or state.get("grpc_url"), (state if ours else {})


def apply(args: argparse.Namespace, expected: int | None) -> str:
    """Bring Triton in line with the repository; ``expected``: the version it must then serve."""
    url, state = _triton(args)
    if state:  # the local server serves a rendering: refresh it first
        keys = ("instances", "dynamic_batching", "torch_threads", "runtime", "device")
        options = {k: state[k] for k in keys if k in state}  # (a server started before runtime)
        render_repository(args.repository, Path(state["rendered"]), **options)
    if url is None:
        return "no running Triton found: the change applies when Triton starts"
    if expected is None:
        return f"Triton at {url} is unaffected"
    load_models(url, [args.name], args.timeout)
    client = TritonClassifier(url, args.name, timeout_s=10.0)
    deadline = time.monotonic() + 10.0
    while (loaded := client.model_metadata().get("versions")) != [str(expected)]:
        if time.monotonic() > deadline:
            raise TritonError(f"Triton at {url} serves versions {loaded}, expected [{expected}]")
        time.sleep(0.2)
    return f"Triton at {url} now serves version {expected}"


def show(args: argparse.Namespace, model_dir: Path) -> None:
    infos = list_versions(model_dir)
    url, _ = _triton(args)
    loaded = None
    if url:
        try:
            loaded = TritonClassifier(url, args.name, timeout_s=3.0).model_metadata()["versions"]
        except TritonError as exc:
            loaded = f"unknown ({exc})"
    if args.json:
        rows = [dataclasses.asdict(i) for i in infos]
        print(json.dumps({"versions": rows, "triton_url": url, "triton_loaded": loaded}, indent=2))
        return
    print(
        f"{'version':>7}  {'served':6}  {'created_at':25}  {'model':18}  {'dataset':24}  "
        f"{'bal_acc':>7}  parity"
    )
    for i in infos:
        dataset = i.dataset_version[:16] + (" (synthetic)" if i.synthetic else "")
        acc = "" if i.balanced_accuracy is None else f"{i.balanced_accuracy:.3f}"
        par = "" if i.parity is None else f"{i.parity:.1g}"
        print(
            f"{i.version:>7}  {'*' if i.served else '':6}  {i.created_at:25}  "
            f"{i.model_name:18}  {dataset:24}  {acc:>7}  {par}"
        )
    if url:
        print(f"Triton at {url}: loaded versions {loaded}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model_dir = args.repository / args.name
    if not model_dir.is_dir():
        print(f"error: {model_dir} does not exist: export a model first", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            show(args, model_dir)
            return 0
        if args.command == "promote":
            before = promote(model_dir, args.version)
            print(f"{args.name}: served version {before} -> {args.version}")
        elif args.command == "rollback":
            current, restored = rollback(model_dir)
            print(f"{args.name}: rolled back from version {current} to {restored}")
        else:
            delete(model_dir, args.version)
            print(f"{args.name}: deleted version {args.version}")
    except VersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    expected = None if args.command == "delete" else served_version(model_dir)
    try:
        print(apply(args, expected))
    except TritonError as exc:
        print(f"error: the repository changed, but Triton did not follow: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
