"""Render the CPU variant of a model repository for the local Triton (Python backend).

``model_repository/`` is production's (native PyTorch backend, GPU). The ``tritonserver`` of
the nvidia-pytriton wheel has no PyTorch backend, so we serve the same ``model.pt`` files
through the Python backend: same names, tensors, batching and version policy, CPU instances.
The production files are only read, never edited, here.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from contracts.repository import model_dirs, versions
from contracts.triton_config import (
    CONFIG_FILE,
    LABELS_FILE,
    read_config,
    write_config,
    write_text_atomic,
)

TEMPLATE = Path(__file__).with_name("backend_model.py")
VERSION_FILES = ("model.pt", "metadata.json")
RENDERED_HEADER = "# Rendered by serving.triton.render from model_repository/; do not edit.\n"


def cpu_config(
    cfg: mc.ModelConfig, instances: int, dynamic_batching: bool, torch_threads: int
) -> mc.ModelConfig:
    """The production config, moved to the Python backend on ``instances`` CPU instances."""
    cpu = mc.ModelConfig()
    cpu.CopyFrom(cfg)
    cpu.backend, cpu.platform = "python", ""
    del cpu.instance_group[:]
    cpu.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    if not dynamic_batching:
        cpu.ClearField("dynamic_batching")
    cpu.ClearField("parameters")  # the PyTorch backend's switches mean nothing here
    # Production warms up at the first version's size, which any version accepts there; here
    # the Python backend holds each version to its own size, so a version of another size
    # would refuse the warm-up and fail to load.
    cpu.ClearField("model_warmup")
    cpu.parameters["SITE_PACKAGES"].string_value = sysconfig.get_paths()["purelib"]
    cpu.parameters["TORCH_NUM_THREADS"].string_value = str(torch_threads)
    return cpu


def render_repository(
    repository: Path,
    target: Path,
    instances: int = 1,
    dynamic_batching: bool = True,
    torch_threads: int = 1,
) -> list[str]:
    """Write the CPU variant of every model of ``repository`` under ``target``.

    Safe to call while Triton serves ``target``: files are replaced atomically and a model only
    changes when Triton is asked to (re)load it.

    Returns:
        The names of the rendered models.
    """
    repository, target = Path(repository).resolve(), Path(target)
    sources = model_dirs(repository)
    target.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in target.iterdir() if p.is_dir()) - {s.name for s in sources}:
        shutil.rmtree(target / stale)
    for source in sources:
        cfg = cpu_config(
            read_config(source / CONFIG_FILE), instances, dynamic_batching, torch_threads
        )
        out = target / source.name
        out.mkdir(exist_ok=True)
        present = versions(source)
        for old in {p.name for p in out.iterdir() if p.is_dir()} - {str(v) for v in present}:
            shutil.rmtree(out / old)
        for version in present:
            vdir = out / str(version)
            vdir.mkdir(exist_ok=True)
            write_text_atomic(vdir / "model.py", TEMPLATE.read_text())
            for name in VERSION_FILES:
                if (source / str(version) / name).exists():
                    _link(source / str(version) / name, vdir / name)
        if (source / LABELS_FILE).exists():
            shutil.copyfile(source / LABELS_FILE, out / LABELS_FILE)
        write_config(out / CONFIG_FILE, cfg, header=RENDERED_HEADER)
    return [s.name for s in sources]


def _link(source: Path, link: Path) -> None:
    # Replace, never remove-then-create: a loading Triton must not see the file missing.
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source)
    os.replace(tmp, link)
