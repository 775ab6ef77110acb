"""Start and stop the real ``tritonserver`` binary (nvidia-pytriton wheel) on this machine.

Five lines give any test folder its own server::

    from serving.triton.server import run_triton

    @pytest.fixture(scope="session")
    def triton(tmp_path_factory):
        with run_triton(repository, cache_dir=tmp_path_factory.mktemp("triton")) as server:
            yield server  # server.grpc_url, server.http_url, server.reload(), ...

Tests get free ports; ``python -m serving.triton`` and ``make run`` ask for Triton's own (gRPC
8001, ...) with ``TritonOptions(conventional_ports=True)``. A server started again after its
process exited (:meth:`TritonServer.restart`) keeps its ports and repository.

The wheel's files: :mod:`serving.triton.install`; ports: :mod:`serving.triton.ports`; the
state file other processes read: :mod:`serving.triton.state`. See
``../shared/notes/triton-local.md`` for the facts this relies on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import ConfigError
from contracts.repository import model_dirs
from serving.triton.client import load_models
from serving.triton.install import (
    TritonInstall,
    TritonServerError,
    find_install,
    prepare_backends,
    server_environment,
)
from serving.triton.ports import TRITON_PORTS, free_port, port_taken
from serving.triton.process import die_with_parent, log_tail, terminate
from serving.triton.render import render_repository
from serving.triton.state import DEFAULT_CACHE, clear_state, write_state

# CPU instances of the local copy: 2 instances x 1 torch thread was the fastest mode on a
# 2-core host (Triton section of docs/benchmarks.md); never more instances than cores.
CPU_INSTANCES = max(1, min(2, os.cpu_count() or 1))
PORT_LABELS = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


@dataclass(frozen=True)
class TritonOptions:
    """How a :class:`TritonServer` listens and runs its models; the defaults suit tests.

    Args:
        host: address the endpoints listen on.
        http_port: fixed HTTP port; 0 for a free one; None for the default (below).
        grpc_port: fixed gRPC port; 0 for a free one; None for the default (below).
        metrics_port: fixed metrics port; 0 for a free one; None for the default (below).
        conventional_ports: a port left None is Triton's own (:data:`TRITON_PORTS`: HTTP
            8000, gRPC 8001, metrics 8002) when it is free, else a free one, said in
            ``port_notes``. Off (tests): a free one.
        reserved_ports: ports a conventional choice must leave alone (the gateway's).
        instances: CPU instances per model.
        dynamic_batching: keep the production config's dynamic batching (off: one request
            per execution, for comparisons).
        torch_threads: intra-op threads of each instance.
        runtime: what the Python backend runs: ``torchscript`` (model.pt) or ``onnx``
            (model.onnx through ONNX Runtime), or ``auto``: each model's choice
            (serving/triton/render.py).
        device: ``cpu``, or ``cuda``: the model on GPU 0 (``make bench-gpu``).
        startup_timeout_s: how long to wait for the models to load.
    """

    host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    conventional_ports: bool = False
    reserved_ports: tuple[int, ...] = ()
    instances: int = 1
    dynamic_batching: bool = True
    torch_threads: int = 1
    runtime: str = "torchscript"
    device: str = "cpu"
    startup_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be 0 to 65535 (0: a free port), not {port}")


class TritonServer:
    """One ``tritonserver`` process serving the CPU rendering of a model repository.

    Args:
        repository: the production model repository (``model_repository/``).
        cache_dir: where the rendered repository, backends, log and state file go.
        options: host, ports, instances and the rest; defaults when None.
    """

    def __init__(
        self,
        repository: Path,
        cache_dir: Path = DEFAULT_CACHE,
        options: TritonOptions | None = None,
    ) -> None:
        o = options or TritonOptions()
        self.repository = Path(repository).resolve()
        self.cache_dir = Path(cache_dir).resolve()
        self.host = o.host
        self.ports: dict[str, int | None] = {
            "http": o.http_port,
            "grpc": o.grpc_port,
            "metrics": o.metrics_port,
        }
        self.conventional_ports = o.conventional_ports
        self.reserved_ports = frozenset(o.reserved_ports)
        # One line per port that is not the one asked for (a conventional port was taken).
        self.port_notes: list[str] = []
        self.render_options: dict[str, Any] = {
            "instances": o.instances,
            "dynamic_batching": o.dynamic_batching,
            "torch_threads": o.torch_threads,
            "runtime": o.runtime,
            "device": o.device,
        }
        self.startup_timeout_s = o.startup_timeout_s
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
        """The ``tritonserver`` command line (explicit model control, every model loaded)."""
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

    def start(self) -> TritonServer:
        """Render, start the server, wait until every model is ready.

        The ports are chosen at the first start and kept: a later start (after :meth:`stop`,
        or :meth:`restart`) listens where clients already point.

        Raises:
            TritonServerError: no model, no install, a taken port, or a failed start.
        """
        if not model_dirs(self.repository):
            raise TritonServerError(
                f"no model in {self.repository}: export one with "
                "`python -m training export --checkpoint CKPT`"
            )
        install = find_install()
        self._claim_ports()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(install, self.cache_dir)
        models = self.render()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(install, backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(install),
                start_new_session=True,  # Ctrl-C reaches us; we stop the server in order
                preexec_fn=die_with_parent,
            )
        try:
            self._wait_ready(models)
        except BaseException:
            self.stop()
            raise
        write_state(self.cache_dir, self._state())
        return self

    def restart(self) -> TritonServer:
        """Start again after the process exited (or stop it first): same ports, same
        repository, rendered again. The previous log is kept as ``tritonserver.log.1``.

        Raises:
            TritonServerError: as :meth:`start`; a port taken meanwhile, among others.
        """
        self.stop()
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        return self.start()

    def poll(self) -> int | None:
        """The process's exit status once it has exited (and is reaped), else None; None
        before :meth:`start` and after :meth:`stop` as well."""
        return None if self.process is None else self.process.poll()

    def _claim_ports(self) -> None:
        for name, port in self.ports.items():
            if port is None and self.conventional_ports:
                self.ports[name] = self._conventional_port(name)
            elif not port:
                self.ports[name] = free_port(self._client_host)
            elif port_taken(self.host, port):
                raise TritonServerError(
                    f"{name} port {port} on {self.host} is taken: stop what uses it, or pick "
                    "another port (0: a free one)"
                )

    def _conventional_port(self, name: str) -> int:
        wanted = TRITON_PORTS[name]
        if wanted in self.reserved_ports:
            why = "is reserved for another server of this stack"
        elif port_taken(self.host, wanted):
            why = f"on {self.host} is taken"
        else:
            return wanted
        port = free_port(self._client_host)
        while port in self.reserved_ports:
            port = free_port(self._client_host)
        note = f"Triton's {PORT_LABELS[name]} port {wanted} {why}: using {port} instead"
        if name == "grpc":
            note += f" (clients: SKIN_TRITON_URL={self._client_host}:{port})"
        self.port_notes.append(note)
        return port

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
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for error messages."""
        return log_tail(self.log_path, lines)

    def reload(self, models: list[str] | None = None, timeout_s: float = 120.0) -> None:
        """Re-render and ask the running server to (re)load models, e.g. after a promotion."""
        rendered = self.render()
        load_models(self.grpc_url, models or rendered, timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait for in-flight requests to finish, SIGKILL after ``timeout_s``."""
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout_s)
            # Its Python-backend stubs share its process group (start_new_session). They
            # usually exit when Triton dies, but one of a SIGKILLed Triton was found still
            # running 90 min later (550 MB): end the group, whatever is left of it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            clear_state(self.cache_dir, process.pid)

    def _state(self) -> dict[str, Any]:
        assert self.process is not None
        return {
            "pid": self.process.pid,
            "grpc_url": self.grpc_url,
            "http_url": self.http_url,
            "metrics_url": self.metrics_url,
            "repository": str(self.repository),
            "rendered": str(self.rendered),
            "log": str(self.log_path),
            **self.render_options,
        }

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_triton(
    repository: Path, cache_dir: Path = DEFAULT_CACHE, options: TritonOptions | None = None
) -> Iterator[TritonServer]:
    """Start a server for ``repository`` (arguments as :class:`TritonServer`), stop it on exit."""
    server = TritonServer(repository, cache_dir, options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
