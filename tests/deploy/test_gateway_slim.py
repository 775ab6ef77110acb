"""The gateway image installs only the core and `serve` extras: it must not need torch & co."""

from __future__ import annotations

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

PROBE = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_ONLY!r}:
            raise ImportError("train-only package imported by the gateway: " + name)
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
