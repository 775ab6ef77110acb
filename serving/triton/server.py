"""Start and stop the real ``tritonserver`` binary (nvidia-pytriton wheel) on this machine.

Five lines give any test folder its own server::

    from serving.triton.server import run_triton

    @pytest.fixture(scope="session")
    def triton(tmp_path_factory):
        with run_triton(repository, cache_dir=tmp_path_factory.mktemp("triton")) as server:
            yield server  # server.grpc_url, server.http_url, server.reload(), ...

See ``../shared/notes/triton-local.md`` for the facts this relies on.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.repository import model_dirs
from contracts.triton_config import write_text_atomic
from serving.triton.render import render_repository

DEFAULT_CACHE = Path(".cache/triton")
STATE_FILE = "server.json"


class TritonServerError(RuntimeError):
    """The local Triton cannot be set up, started or reached; the message says how to fix it."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server, its libraries, the Python backend and the stub."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_install(python: str | None = None) -> TritonInstall:
    """Locate the server files of the ``nvidia-pytriton`` wheel without importing pytriton.

    Args:
        python: ``"major.minor"`` whose backend stub to use; default: the running Python's.
    """
    hint = "install it with `.venv/bin/pip install --no-deps nvidia-pytriton==0.7.0` (make install)"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(f"the nvidia-pytriton wheel is not installed: {hint}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.libs, install.python_backend, install.stub):
        if not path.exists():
            raise TritonServerError(f"{path} is missing (Python {version}): {hint}")
    return install


def prepare_backends(install: TritonInstall, cache_dir: Path) -> Path:
    """A ``--backend-directory`` whose ``python/`` holds the backend library, utils and stub.

    Triton looks for the stub next to ``libtriton_python.so``, not in the wheel's stubs folder.
    """
    target = Path(cache_dir) / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in [*install.python_backend.glob("*.so"), *install.python_backend.glob("*.py")]:
        _copy_if_changed(source, target / source.name)
    _copy_if_changed(install.stub, target / install.stub.name)
    return target.parent


def _copy_if_changed(source: Path, target: Path) -> None:
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        # Taken means a listener: connections of a server just stopped linger in TIME_WAIT for
        # a minute, and tritonserver itself binds with SO_REUSEADDR, so a restart may reuse it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise TritonServerError(
                f"{what} port {port} on {host} is taken: stop what uses it, or pick another port "
                "(or none: a free one is chosen)"
            ) from None


def _die_with_parent() -> None:
    # The server must not outlive a test run or a CLI that was killed hard.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# CPU instances of the local copy: 2 instances x 1 torch thread was the fastest mode on a
# 2-core host (Triton section of docs/benchmarks.md); never more instances than cores.
CPU_INSTANCES = max(1, min(2, os.cpu_count() or 1))


class TritonServer:
    """One ``tritonserver`` process serving the CPU rendering of a model repository.

    Args:
        repository: the production model repository (``model_repository/``).
        cache_dir: where the rendered repository, backends, log and state file go.
        host: address the endpoints listen on.
        http_port, grpc_port, metrics_port: fixed ports, or None for free ones.
        instances: CPU instances per model.
        dynamic_batching: keep the production config's dynamic batching (off: one request
            per execution, for comparisons).
        torch_threads: intra-op threads of each instance.
        startup_timeout_s: how long to wait for the models to load.
    """

    def __init__(
        self,
        repository: Path,
        cache_dir: Path = DEFAULT_CACHE,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        instances: int = 1,
        dynamic_batching: bool = True,
        torch_threads: int = 1,
        startup_timeout_s: float = 180.0,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.cache_dir = Path(cache_dir).resolve()
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.render_options = {
            "instances": instances,
            "dynamic_batching": dynamic_batching,
            "torch_threads": torch_threads,
        }
        self.startup_timeout_s = startup_timeout_s
        self.rendered = self.cache_dir / "repo"
        self.log_path = self.cache_dir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def render(self) -> list[str]:
        """(Re)write the CPU variant of the repository; returns the model names."""
        return render_repository(self.repository, self.rendered, **self.render_options)

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        h, p = self.host, self.ports
        return [
            str(install.binary),
            f"--model-repository={self.rendered}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            f"--http-address={h}",
            f"--http-port={p['http']}",
            f"--grpc-address={h}",
            f"--grpc-port={p['grpc']}",
            f"--metrics-address={h}",
            f"--metrics-port={p['metrics']}",
            # Python-backend shared memory is named; unique names let servers run side by side.
            f"--backend-config=python,shm-region-prefix-name=skin{os.getpid()}_{p['grpc']}_",
        ]

    def environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(install.libs)]
        # The stub embeds libpython: prefer the running interpreter's, so stdlib versions match.
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and list(Path(libdir).glob("libpython3*.so*")):
            paths.append(libdir)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*paths, env.get("LD_LIBRARY_PATH", "")])
        return env

    def start(self) -> TritonServer:
        """Render, start the server, wait until every model is ready. Raises TritonServerError."""
        if not model_dirs(self.repository):
            raise TritonServerError(
                f"no model in {self.repository}: export one with "
                "`python -m training export --checkpoint CKPT`"
            )
        install = find_install()
        for name, port in self.ports.items():
            if port is None:
                self.ports[name] = free_port(self._client_host)
            else:
                _check_port(self.host, port, name)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(install, self.cache_dir)
        models = self.render()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(install, backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(install),
                start_new_session=True,  # Ctrl-C reaches us; we stop the server in order
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(models)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def _wait_ready(self, models: list[str]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise TritonServerError(
                    f"tritonserver exited with status {self.process.returncode} while starting "
                    f"(a model failed to load?). Log {self.log_path}, last lines:\n"
                    + self.log_tail()
                )
            if self._http_ok("/v2/health/ready") and all(
                self._http_ok(f"/v2/models/{m}/ready") for m in models
            ):
                return
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver did not become ready within {self.startup_timeout_s:.0f} s. "
            f"Log {self.log_path}, last lines:\n" + self.log_tail()
        )

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        # Triton's option tables are long and say nothing about the failure.
        kept = [ln for ln in text.splitlines() if not ln.startswith(("|", "+"))]
        return "\n".join(kept[-lines:])

    def reload(self, models: list[str] | None = None, timeout_s: float = 120.0) -> None:
        """Re-render and ask the running server to (re)load models, e.g. after a promotion."""
        rendered = self.render()
        load_models(self.grpc_url, models or rendered, timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait for in-flight requests to finish, SIGKILL after ``timeout_s``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and read_state(self.cache_dir, False).get("pid") == process.pid:
            (self.cache_dir / STATE_FILE).unlink(missing_ok=True)

    def _write_state(self) -> None:
        assert self.process is not None
        state = {
            "pid": self.process.pid,
            "grpc_url": self.grpc_url,
            "http_url": self.http_url,
            "metrics_url": self.metrics_url,
            "repository": str(self.repository),
            "rendered": str(self.rendered),
            "log": str(self.log_path),
            **self.render_options,
        }
        write_text_atomic(self.cache_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_state(cache_dir: Path = DEFAULT_CACHE, check_alive: bool = True) -> dict[str, Any]:
    """What a running server wrote about itself (URLs, repository, render options), or {}."""
    try:
        state = json.loads((Path(cache_dir) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if check_alive:
        try:
            os.kill(int(state["pid"]), 0)
        except (OSError, KeyError, ValueError):
            return {}
    return state


def load_models(grpc_url: str, names: list[str], timeout_s: float = 120.0) -> None:
    """Ask a running server to (re)load models from its repository; it re-reads the config."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from serving.triton.client import map_error

    with grpcclient.InferenceServerClient(grpc_url) as client:
        for name in names:
            try:
                client.load_model(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                raise map_error(exc, grpc_url, name) from None


@contextlib.contextmanager
def run_triton(repository: Path, **options: Any) -> Iterator[TritonServer]:
    """Start a server for ``repository`` (options as :class:`TritonServer`), stop it on exit."""
    server = TritonServer(repository, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
