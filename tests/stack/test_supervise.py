"""``make run`` keeps running what it started: the real stack (``python -m tools.stack``: real
Triton + gateway) restarts a Triton killed as the out-of-memory killer would, on the same
ports, reaps every child, and stops with a clear message when the restarts are used up or the
gateway dies.

The stack serves the session's exported model (``model_repository``): its recorded checkpoint
is where the test's config says the run's best checkpoint is, so the stack does not train.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from contracts.metadata import read_metadata
from contracts.tensors import DEFAULT_MODEL_NAME
from serving.triton.ports import free_port
from serving.triton.state import STATE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.triton]
ROOT = Path(__file__).resolve().parents[2]
KILLED = "Triton exited with signal 9 (killed, e.g. out of memory)"


class Stack:
    """``python -m tools.stack`` in ``folder``, its output collected line by line."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_")}
        env.update(
            SKIN_RULES_PATH=str(ROOT / "configs" / "body_location_rules.yaml"),
            SKIN_DATABASE_URL=f"sqlite:///{folder / 'predictions.db'}",
        )
        cmd = [sys.executable, "-m", "tools.stack", "--config", "run.yaml"]
        cmd += ["--port", str(self.port), "--triton-free-ports", *args]
        self.process = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.5)  # the reader's last lines
                pytest.fail(f"no {text!r} in the stack's output:\n{self.output[-5000:]}")
            time.sleep(0.1)

    def triton(self) -> dict:
        """What the running Triton wrote about itself (pid, URLs)."""
        return json.loads((self.folder / ".cache" / "triton" / STATE_FILE).read_text())

    def gateway_pid(self) -> int:
        pid = self.process.pid
        for child in (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split():
            if "serving" in Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0"):
                return int(child)
        raise AssertionError("the stack has no gateway process")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def zombie_of(pid: int, parent: int) -> bool:
    """Whether ``pid`` is an exited child of ``parent`` that nobody has reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False  # reaped
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["State"].startswith("Z") and int(fields["PPid"]) == parent


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(check, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def folder(tmp_path: Path, model_repository: Path, served_checkpoint: Path) -> Path:
    """A working folder where ``make run`` finds its model exported: a copy of the session's
    repository, and a config whose run's best checkpoint is the one that was exported."""
    shutil.copytree(model_repository, tmp_path / "model_repository")
    recorded = read_metadata(model_repository / DEFAULT_MODEL_NAME / "1").checkpoint or {}
    assert Path(recorded["path"]).resolve() == served_checkpoint.resolve()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.ckpt").symlink_to(served_checkpoint)
    config = {"trainer": {"default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()


def predict(stack: Stack, photo: Path) -> httpx.Response:
    key = (stack.folder / ".cache" / "serving" / "dev-api-key").read_text().strip()
    with photo.open("rb") as f:
        return httpx.post(
            f"{stack.url}/v1/predictions",
            headers={"X-API-Key": key},
            files={"image": (photo.name, f, "image/jpeg")},
            data={"body_location": "back"},
            timeout=30,
        )


def test_killed_triton_is_restarted_reaped_and_given_up_on_after_its_budget(
    folder: Path, stacks: list[Stack], real_lesions_dir: Path
) -> None:
    stack = Stack(folder, "--triton-restarts", "1", "--restart-backoff", "0.2")
    stacks.append(stack)
    stack.wait_for("The stack is up")
    assert "is exported as version 1: not training" in stack.output
    first = stack.triton()

    os.kill(first["pid"], signal.SIGKILL)
    stack.wait_for(f"{KILLED}; restarting in 0.2 s (restart 1 of 1)")
    stack.wait_for(f"Triton is serving again on gRPC {first['grpc_url']}")  # the same ports
    assert not zombie_of(first["pid"], stack.process.pid)
    second = stack.triton()
    assert second["pid"] != first["pid"] and second["grpc_url"] == first["grpc_url"]
    # The gateway, still pointed at the same address, serves with the new Triton.
    strict = f"{stack.url}/readyz?strict=true"
    assert wait_until(lambda: httpx.get(strict, timeout=5).status_code == 200), stack.output
    photo = sorted(real_lesions_dir.glob("*.jpg"))[0]
    answer = predict(stack, photo)
    assert answer.status_code == 201, answer.text
    assert answer.json()["model"]["version"] == "1"

    os.kill(second["pid"], signal.SIGKILL)  # one exit more than the budget allows
    assert stack.process.wait(timeout=120) == 1
    time.sleep(0.5)  # the reader's last lines
    assert (
        f"error: {KILLED}, and its 1 restarts within 600 s are used up: stopping the stack"
        in stack.output
    ), stack.output[-3000:]
    assert gone(second["pid"])
    assert not (folder / ".cache" / "triton" / STATE_FILE).exists()  # stopped in order
    with pytest.raises(httpx.ConnectError):  # the gateway was stopped with it
        httpx.get(f"{stack.url}/healthz", timeout=5)


def test_dead_gateway_stops_the_stack_and_its_triton(folder: Path, stacks: list[Stack]) -> None:
    stack = Stack(folder)
    stacks.append(stack)
    stack.wait_for("The stack is up")
    triton = stack.triton()
    os.kill(stack.gateway_pid(), signal.SIGKILL)
    assert stack.process.wait(timeout=120) == 1
    time.sleep(0.5)
    assert re.search(
        r"error: the gateway exited with signal 9 \(killed, e.g. out of memory\): "
        r"stopping the stack",
        stack.output,
    ), stack.output[-3000:]
    assert gone(triton["pid"])
    assert not (folder / ".cache" / "triton" / STATE_FILE).exists()  # stopped in order
