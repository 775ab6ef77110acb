"""The local Triton process: rendering, clear start-up errors, clean stops."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from contracts.tensors import DEFAULT_MODEL_NAME, INPUT_NAME, OUTPUT_NAME
from contracts.triton_config import read_config
from serving.triton.client import AsyncTritonClassifier, TritonClassifier, TritonUnavailable
from serving.triton.install import TritonServerError, find_install
from serving.triton.server import TritonOptions, TritonServer, run_triton
from serving.triton.state import STATE_FILE

pytestmark = [pytest.mark.triton, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_rendering_is_a_cpu_copy_and_leaves_production_alone(triton, model_repository):
    production = read_config(model_repository / DEFAULT_MODEL_NAME / "config.pbtxt")
    rendered = read_config(triton.rendered / DEFAULT_MODEL_NAME / "config.pbtxt")
    assert production.backend == "pytorch"
    assert [g.kind for g in production.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert rendered.backend == "python"
    assert [g.kind for g in rendered.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    for field in ("input", "output", "max_batch_size", "version_policy", "dynamic_batching"):
        assert getattr(rendered, field) == getattr(production, field), field
    assert [rendered.input[0].name, rendered.output[0].name] == [INPUT_NAME, OUTPUT_NAME]
    version = triton.rendered / DEFAULT_MODEL_NAME / "1"
    assert (version / "model.pt").resolve() == (
        model_repository / DEFAULT_MODEL_NAME / "1" / "model.pt"
    )
    assert (version / "model.py").is_file()


def test_client_of_a_stopped_server_fails_within_deadline(model_repository, tmp_path, lesions):
    _, images = lesions
    deadline = 2.0
    with run_triton(model_repository, cache_dir=tmp_path) as server:
        client = TritonClassifier(server.grpc_url, timeout_s=deadline)
        assert client.predict(images[:2]).shape == (2, 7)
        assert (tmp_path / STATE_FILE).is_file()
    assert not (tmp_path / STATE_FILE).exists()
    start = time.monotonic()
    with pytest.raises(TritonUnavailable, match="unreachable"):
        client.predict(images[:2])
    assert time.monotonic() - start < deadline + 1.0
    assert client.ready() is False

    async def call() -> None:
        async with AsyncTritonClassifier(server.grpc_url, timeout_s=deadline) as aclient:
            assert await aclient.ready() is False
            await aclient.predict(images[:2])

    start = time.monotonic()
    with pytest.raises(TritonUnavailable):
        asyncio.run(call())
    assert time.monotonic() - start < 2 * deadline + 1.0


def test_taken_port_is_a_clear_error(model_repository, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TritonServerError, match=f"port {port} .* is taken"):
            TritonServer(
                model_repository, cache_dir=tmp_path, options=TritonOptions(grpc_port=port)
            ).start()


def test_model_that_fails_to_load_shows_the_log(model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    (repo / DEFAULT_MODEL_NAME / "1" / "model.pt").write_bytes(b"not a TorchScript file")
    with pytest.raises(TritonServerError, match=r"(?s)exited.*failed to load.*skin_lesion"):
        TritonServer(repo, cache_dir=tmp_path / "cache").start()


def test_empty_repository_is_a_clear_error(tmp_path):
    with pytest.raises(TritonServerError, match=r"no model in .* export one"):
        TritonServer(tmp_path, cache_dir=tmp_path / "cache").start()


def test_cli_serves_until_sigterm_then_stops_the_server(model_repository, tmp_path):
    cli = subprocess.Popen(
        [sys.executable, "-m", "serving.triton", "--repository", str(model_repository),
         "--cache-dir", str(tmp_path), "--grpc-port", "0", "--http-port", "0",
         "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = cli.stdout.readline()
        assert line.startswith("Triton ready"), line + cli.stdout.read()
        state = json.loads((tmp_path / STATE_FILE).read_text())
        assert TritonClassifier(state["grpc_url"]).ready()
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)
    assert not (tmp_path / STATE_FILE).exists()


def test_restart_after_a_kill_keeps_ports_and_reaps_the_dead_process(
    model_repository, tmp_path, lesions
):
    _, images = lesions
    with run_triton(model_repository, cache_dir=tmp_path) as server:
        ports, old = dict(server.ports), server.process.pid
        os.kill(old, signal.SIGKILL)  # as the kernel's out-of-memory killer does
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() == -signal.SIGKILL
        with pytest.raises(ChildProcessError):  # poll reaped it: no zombie left behind
            os.waitpid(old, os.WNOHANG)
        server.restart()
        assert server.ports == ports and server.process.pid != old
        assert TritonClassifier(server.grpc_url).predict(images[:2]).shape == (2, 7)
        assert json.loads((tmp_path / STATE_FILE).read_text())["pid"] == server.process.pid
        assert (tmp_path / "tritonserver.log.1").is_file()  # the dead server's log is kept


def test_missing_backend_stub_is_a_clear_error():
    with pytest.raises(
        TritonServerError, match=r"(?s)Python 2\.7.*pip install --no-deps nvidia-pytriton"
    ):
        find_install(python="2.7")
    assert find_install().stub.is_file()  # the running Python's exists
