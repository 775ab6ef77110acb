"""The gateway image installs only the core and `serve` extras and copies only contracts/ and
serving/: it must need neither torch & co. nor the project's training, networks or tools."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ONLY = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "wandb",
    "timm",
    "albumentations",
    "pandas",
    "sklearn",
    "matplotlib",
    "optuna",
)
# The project's own packages that Dockerfile.gpu's gateway target does not copy.
NOT_IN_GATEWAY = ("training", "models", "tools", "benchmarks", "fuzz")

PROBE = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_ONLY!r}:
            raise ImportError("train-only package imported by the gateway: " + name)
        if name.split(".")[0] in {NOT_IN_GATEWAY!r}:
            raise ImportError("package not in the gateway image imported by the gateway: " + name)
sys.meta_path.insert(0, Block())
import serving.__main__, serving.app, serving.security, contracts.rules, serving.triton.client
from serving.app import create_app
from serving.settings import Settings
create_app(Settings(allow_no_auth=True))
print("gateway imports without the train extras")
"""


def test_gateway_imports_without_training_packages() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_train_only_packages_are_not_core_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert not [p for p in TRAIN_ONLY if p in core and p != "sklearn"]
    assert any(d.startswith("torch==") for d in project["optional-dependencies"]["train"])


def gateway_stage() -> list[str]:
    """The instructions of Dockerfile.gpu's ``gateway`` target, continuation lines joined."""
    text = (ROOT / "Dockerfile.gpu").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    stage: list[str] | None = None
    for line in lines:
        if re.match(r"(?i)FROM\s", line):
            if stage is not None:
                break
            if re.search(r"(?i)\sAS\s+gateway$", line):
                stage = []
        elif stage is not None and line and not line.startswith("#"):
            stage.append(line)
    assert stage, "Dockerfile.gpu has no `gateway` target"
    return stage


def test_gateway_image_copies_no_training_or_models_folder() -> None:
    sources = []
    for line in gateway_stage():
        words = shlex.split(line)
        if words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            sources += [s.rstrip("/") for s in args[:-1]]
    tops = {s.split("/")[0] for s in sources}
    assert {"contracts", "serving"} <= tops, sources
    assert "." not in tops and "*" not in tops, f"the gateway copies the whole context: {sources}"
    assert not tops & set(NOT_IN_GATEWAY), sources
