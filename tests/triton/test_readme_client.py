"""model_repository/README.md's gRPC client, run as written against ``python -m serving.triton``
on Triton's own ports, and on the free port the server names when gRPC 8001 is taken."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest

from contracts.images import eval_resize
from contracts.metadata import read_metadata
from contracts.tensors import DEFAULT_MODEL_NAME
from serving.triton.client import TritonClassifier
from serving.triton.ports import TRITON_PORTS, port_taken
from serving.triton.state import STATE_FILE

pytestmark = [pytest.mark.triton, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "model_repository" / "README.md"
HOST = "127.0.0.1"


def readme_client() -> str:
    """The README's Python blocks, in order, as one script (the later ones use the first's)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks and "InferenceServerClient(" in blocks[0], "no gRPC client in the README"
    return "\n".join(blocks)


@pytest.fixture
def workdir(tmp_path: Path, gated_repository: Path, real_lesions_dir: Path) -> Path:
    """A folder laid out as the README expects: ``model_repository/`` (a version with both
    outputs, which the README's second block asks for) and ``lesion.jpg``, a real photo."""
    (tmp_path / "model_repository").symlink_to(gated_repository)
    (tmp_path / "lesion.jpg").symlink_to(sorted(real_lesions_dir.glob("*.jpg"))[0])
    return tmp_path


@contextmanager
def triton_cli(repository: Path, cache: Path) -> Iterator[tuple[list[str], dict]]:
    """``python -m serving.triton`` with its default ports: (the lines it printed up to
    ``Triton ready``, its server.json); SIGTERM on exit."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "serving.triton", "--repository", str(repository),
         "--cache-dir", str(cache), "--instances", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert cli.stdout is not None
    try:
        lines: list[str] = []
        while not (lines and lines[-1].startswith("Triton ready")):
            line = cli.stdout.readline()
            assert line, "".join(lines) + cli.stdout.read()  # it exited before ready
            lines.append(line)
        yield lines, json.loads((cache / STATE_FILE).read_text())
    finally:
        cli.terminate()
        cli.wait(timeout=60)


def run_readme(workdir: Path, triton_url: str | None) -> list[str]:
    """Run the README's client in ``workdir``, ``SKIN_TRITON_URL`` set or (None) unset."""
    env = {k: v for k, v in os.environ.items() if k != "SKIN_TRITON_URL"}
    env["PYTHONPATH"] = str(ROOT)
    if triton_url:
        env["SKIN_TRITON_URL"] = triton_url
    out = subprocess.run(
        [sys.executable, "-c", readme_client()],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def expected_top3(workdir: Path, grpc_url: str) -> list[str]:
    """The three most probable labels of ``lesion.jpg``, from the project's own client."""
    repo = workdir / "model_repository" / DEFAULT_MODEL_NAME
    size = read_metadata(repo / "1").input_size
    image = cv2.imread(str(workdir / "lesion.jpg"), cv2.IMREAD_COLOR_RGB)
    probs = TritonClassifier(grpc_url).predict(eval_resize(image, size)[None])[0]
    labels = (repo / "labels.txt").read_text().split()
    return [labels[i] for i in probs.argsort()[::-1][:3]]


def printed_top3(lines: list[str]) -> list[str]:
    return re.findall(r"'(\w+)'", lines[0])


def test_readme_client_as_written_reaches_the_cli_on_tritons_ports(workdir: Path) -> None:
    free = {name: not port_taken(HOST, port) for name, port in TRITON_PORTS.items()}
    with triton_cli(workdir / "model_repository", workdir / "cache") as (lines, state):
        urls = {name: state[f"{name}_url"] for name in TRITON_PORTS}
        for name, port in TRITON_PORTS.items():
            on_it = f"{HOST}:{port}" in urls[name]
            # Its own port where that was free; else a free one, and a line that says so.
            assert on_it == free[name], (name, urls[name], lines)
            assert any(f" port {port} on {HOST} is taken: using" in ln for ln in lines) != on_it
        assert f"gRPC {urls['grpc']} " in lines[-1]
        expected = expected_top3(workdir, urls["grpc"])
        # As written: no address given, so 127.0.0.1:8001 unless the server said otherwise.
        printed = run_readme(workdir, None if free["grpc"] else urls["grpc"])
    assert printed_top3(printed) == expected
    # The decision block: this version has no ``decision``, so it names the most probable.
    assert printed[-1] == f"named: [{expected[0]!r}]"


def test_taken_grpc_port_is_replaced_and_the_readme_client_follows(workdir: Path) -> None:
    with socket.socket() as holder:
        if not port_taken(HOST, TRITON_PORTS["grpc"]):  # else something else holds it already
            holder.bind((HOST, TRITON_PORTS["grpc"]))
            holder.listen()
        with triton_cli(workdir / "model_repository", workdir / "cache") as (lines, state):
            grpc_url = state["grpc_url"]
            port = int(grpc_url.rsplit(":", 1)[1])
            assert port != TRITON_PORTS["grpc"]
            note = (
                f"Triton's gRPC port 8001 on {HOST} is taken: using {port} instead "
                f"(clients: SKIN_TRITON_URL={grpc_url})"
            )
            assert note + "\n" in lines, lines
            assert f"gRPC {grpc_url} " in lines[-1]
            expected = expected_top3(workdir, grpc_url)
            printed = run_readme(workdir, grpc_url)
    assert printed_top3(printed) == expected
