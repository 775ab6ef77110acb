"""``make run``: the whole main job on one machine.

1. Train (``python -m training fit --config CONFIG``) unless the repository already holds a
   version exported from that config's run; then evaluate on the held-out split, with and
   without test-time augmentation, and export the calibrated variant with the higher VALIDATION
   balanced accuracy with its operating points and gate
   (``python -m training evaluate --tta --export best``).
   That version becomes the served one (another config: a new version, promoted; the previous
   one stays for ``python -m serving.versions rollback``).
2. Start the real Triton on a CPU copy of the repository (on Triton's ports, gRPC 8001, where
   free) and the gateway, wait until the gateway's strict readiness says the model is served,
   and print the URLs.
3. Serve until Ctrl-C or SIGTERM (``--check`` instead sends one real photo and exits). When
   Triton exits (an out-of-memory kill, a crash) it is started again on the same ports, after
   1, 2, 4 ... s (at most 30 s), at most ``--triton-restarts`` times within
   ``--restart-window`` seconds; one more exit, or the gateway's exit, stops the stack with
   status 1. Every child is reaped.

Data: ``HAM10000_DIR`` when set, else the synthetic set (labelled synthetic everywhere).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from contracts.errors import ConfigError
from contracts.metadata import MetadataError, read_metadata
from contracts.repository import promote, served_version
from contracts.tensors import DEFAULT_MODEL_NAME
from serving.security import DEV_KEY_FILE, ensure_dev_key
from serving.triton.install import TritonServerError
from serving.triton.process import (
    RestartBudget,
    RestartPolicy,
    describe_exit,
    die_with_parent,
    terminate,
)
from serving.triton.render import AUTO_RUNTIME
from serving.triton.server import CPU_INSTANCES, TritonOptions, TritonServer, run_triton


def _versions(repository: Path, name: str) -> list[int]:
    folder = repository / name
    return sorted(int(p.name) for p in folder.glob("[0-9]*") if (p / "model.pt").is_file())


def _run(args: list[str]) -> None:
    print("+ " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def train_and_export(config: Path, repository: Path, name: str) -> None:
    """Fit the configured run, evaluate its best checkpoint, export the calibrated variant
    (plain or TTA) chosen on validation."""
    root = yaml.safe_load(config.read_text())["trainer"]["default_root_dir"]
    _run(["-m", "training", "fit", "--config", str(config)])
    checkpoint = Path(root) / "checkpoints" / "best.ckpt"
    parity = []
    if not (os.environ.get("REAL_LESIONS_DIR") or os.environ.get("HAM10000_DIR")):
        from training.synthetic import make_synthetic  # the set the model was trained on

        parity = ["--parity-images", str(make_synthetic() / "images")]
    _run(
        [
            "-m",
            "training",
            "evaluate",
            "--model",
            str(checkpoint),
            "--tta",
            "--export",
            "best",
            "--repository",
            str(repository),
            "--export-name",
            name,
            *parity,
        ]
    )


def exported_version(repository: Path, name: str, checkpoint: Path) -> int | None:
    """The version exported from ``checkpoint`` (by its recorded path), if any."""
    for version in _versions(repository, name):
        try:
            meta = read_metadata(repository / name / str(version))
        except MetadataError:
            continue
        recorded = (meta.checkpoint or {}).get("path")
        if recorded and Path(recorded).resolve() == checkpoint.resolve():
            return version
    return None


def prepare_model(config: Path, repository: Path, name: str) -> None:
    """Make the config's model the served one: train, evaluate and export it unless a version
    of it exists, and serve that version. A first export is served at once; a later one (another
    config: another architecture or input size) is promoted, and the previous version stays
    for ``python -m serving.versions rollback``."""
    root = yaml.safe_load(config.read_text())["trainer"]["default_root_dir"]
    checkpoint = Path(root) / "checkpoints" / "best.ckpt"
    version = exported_version(repository, name, checkpoint)
    if version is None:
        train_and_export(config, repository, name)
        version = exported_version(repository, name, checkpoint)
        if version is None:  # exported from a copy of the checkpoint, or by hand
            version = max(_versions(repository, name))
    else:
        print(f"{config} is exported as version {version}: not training", flush=True)
    if served_version(repository / name) != version:
        promote(repository / name, version)
        print(
            f"serving version {version} ({config}); `python -m serving.versions rollback` "
            "serves the previous one",
            flush=True,
        )


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0, what: str = "gateway"
) -> None:
    """Poll ``url``/readyz?strict=true (the model and the database ready too) until 200; raise
    if ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited with {describe_exit(proc.returncode)}")
        try:
            if httpx.get(f"{url}/readyz", params={"strict": "true"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the {what} was not ready within {timeout_s:.0f} s")


def supervise(
    triton: TritonServer,
    gateway: subprocess.Popen[bytes],
    policy: RestartPolicy,
    poll_s: float = 0.5,
) -> int:
    """Serve until a child gives up: restart Triton when it exits (same ports and repository,
    within ``policy``), and return 1 when its restarts are spent or the gateway exits.

    ``poll`` reaps an exited child at once: no zombie, and the Python-backend stubs of a killed
    Triton, which wait for their parent's pid to vanish, exit too.
    """
    budget = RestartBudget(policy)
    while True:
        if gateway.poll() is not None:
            print(
                f"error: the gateway exited with {describe_exit(gateway.returncode)}: "
                "stopping the stack",
                file=sys.stderr,
                flush=True,
            )
            return 1
        status = triton.poll()
        if status is not None and not restart_triton(
            triton, budget, f"Triton exited with {describe_exit(status)}"
        ):
            return 1
        time.sleep(poll_s)


def restart_triton(triton: TritonServer, budget: RestartBudget, reason: str) -> bool:
    """Start Triton again after its backoff, as often as ``budget`` allows; False when spent."""
    p = budget.policy
    triton.stop()  # reaped already by poll; clears its state file
    while True:
        delay = budget.next_delay(time.monotonic())
        if delay is None:
            print(
                f"error: {reason}, and its {p.max_restarts} restarts within {p.window_s:g} s are "
                f"used up: stopping the stack (Triton log: {triton.log_path})",
                file=sys.stderr,
                flush=True,
            )
            return False
        print(
            f"{reason}; restarting in {delay:g} s (restart {budget.used} of {p.max_restarts})",
            flush=True,
        )
        time.sleep(delay)
        try:
            triton.restart()
        except TritonServerError as exc:
            reason = f"Triton did not start again: {str(exc).splitlines()[0]}"
            continue
        print(f"Triton is serving again on gRPC {triton.grpc_url}", flush=True)
        return True


def check(url: str, key: str, photo: Path) -> dict[str, Any]:
    """One real prediction through the running stack."""
    with photo.open("rb") as f:
        r = httpx.post(
            f"{url}/v1/predictions",
            headers={"X-API-Key": key},
            files={"image": (photo.name, f, "image/jpeg")},
            data={"body_location": "back"},
            timeout=30,
        )
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--port", type=int, default=int(os.environ.get("SKIN_PORT", 8000)))
    p.add_argument(
        "--check",
        type=Path,
        metavar="PHOTO",
        help="send this photo through the stack, print the answer and stop",
    )
    p.add_argument(
        "--triton-free-ports",
        action="store_true",
        help="any free ports for Triton, not its own 8000-8002 (several stacks on one host)",
    )
    p.add_argument(
        "--triton-restarts",
        type=int,
        default=RestartPolicy.max_restarts,
        help="restarts of Triton allowed within --restart-window (default: %(default)s)",
    )
    p.add_argument("--restart-window", type=float, default=RestartPolicy.window_s, help="seconds")
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=RestartPolicy.first_delay_s,
        help="seconds before the first restart; doubled for each next one, at most "
        f"{RestartPolicy.max_delay_s:g} s",
    )
    args = p.parse_args(argv)
    try:
        policy = RestartPolicy(
            max_restarts=args.triton_restarts,
            window_s=args.restart_window,
            first_delay_s=args.restart_backoff,
            max_delay_s=max(RestartPolicy.max_delay_s, args.restart_backoff),
        )
    except ConfigError as exc:
        p.error(str(exc))

    prepare_model(args.config, args.repository, args.name)

    ensure_dev_key()
    key = DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else None
    # SIGTERM ends the stack like Ctrl-C: both children are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    options = TritonOptions(
        conventional_ports=not args.triton_free_ports,
        reserved_ports=(args.port,),
        instances=CPU_INSTANCES,
        runtime=AUTO_RUNTIME,  # ONNX Runtime where the versions allow (serving.triton.render)
    )
    try:
        with run_triton(args.repository, options=options) as triton:
            return serve(triton, args, key, policy)
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def serve(
    triton: TritonServer, args: argparse.Namespace, key: str | None, policy: RestartPolicy
) -> int:
    """Start the gateway against the running ``triton``, then check or supervise both."""
    for note in triton.port_notes:
        print(note, flush=True)
    env = {
        **os.environ,
        "SKIN_TRITON_URL": triton.grpc_url,
        "SKIN_PORT": str(args.port),
        "SKIN_MODEL_NAME": args.name,
        "SKIN_MODEL_REPOSITORY": str(args.repository),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "serving"], env=env, preexec_fn=die_with_parent
    )
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url, gateway)
        print(
            "\nThe stack is up:\n"
            f"  clinician page   {url}/\n"
            f"  monitoring page  {url}/monitoring\n"
            f"  REST API docs    {url}/docs\n"
            f"  Triton gRPC      {triton.grpc_url} (model {args.name})\n"
            f"  API key          {DEV_KEY_FILE} "
            f"({'dev key' if key else 'SKIN_API_KEY_HASHES from your .env; key not on disk'})\n"
            f"  Triton log       {triton.cache_dir / 'tritonserver.log'}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        if args.check:
            if key is None:
                raise SystemExit("--check needs the dev key in " + str(DEV_KEY_FILE))
            answer = check(url, key, args.check)
            top = answer["ranking"][0]
            print(
                f"check: {args.check.name} -> {top['code']} ({top['probability']:.3f}), "
                f"model version {answer['model']['version']}, prediction {answer['id']}"
            )
            return 0
        return supervise(triton, gateway, policy)
    finally:
        terminate(gateway, 15)


if __name__ == "__main__":
    sys.exit(main())
