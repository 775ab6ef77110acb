"""Render the CPU variant of a model repository for the local Triton (Python backend).

``model_repository/`` is production's (native PyTorch backend, GPU). The ``tritonserver`` of
the nvidia-pytriton wheel has no PyTorch backend, so we serve the same ``model.pt`` files
through the Python backend: same names, tensors, batching and version policy, CPU instances.
The production files are only read, never edited, here.

``runtime="onnx"`` serves each version's ``model.onnx`` with ONNX Runtime instead, from the
config Triton's ONNX Runtime backend would get (``contracts.triton_config.onnxruntime_config``:
the image input pinned to the served version's size): the Python-backend model reads the
config's ``RUNTIME`` parameter. The served versions are checked first: every model file their
``metadata.json`` lists must be there, and ``model.onnx`` for the ONNX runtime; a fusion
version (two inputs, ``image__0`` and ``clinical__1``) must take the clinical metadata in this
code's encoding (``contracts.clinical.check_compatible``), else it is not served.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from contracts.clinical import ClinicalEncodingError
from contracts.metadata import METADATA_FILE, MetadataError, VersionMetadata, check_artifacts
from contracts.repository import model_dirs, versions
from contracts.triton_config import (
    ARTIFACT_FILES,
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    ConfigFileError,
    onnxruntime_config,
    read_config,
    served_versions,
    write_config,
    write_text_atomic,
)

TEMPLATE = Path(__file__).with_name("backend_model.py")
VERSION_FILES = (*ARTIFACT_FILES.values(), METADATA_FILE)
# The model file each runtime of the Python-backend model runs.
# torchscript_bf16 and onnx_int8: the reduced-precision files of training.export.precision.
RUNTIMES: dict[str, str] = {
    "torchscript": TORCHSCRIPT_FILE,
    "onnx": ONNX_FILE,
    "torchscript_bf16": ARTIFACT_FILES["torchscript_bf16"],
    "onnx_int8": ARTIFACT_FILES["onnx_int8"],
}
DEFAULT_RUNTIME = "torchscript"
# Per model: ONNX Runtime where it can serve every served version (on the CPU, each lists
# model.onnx, one input size), else TorchScript. On this CPU the gateway served 1.35x the
# requests with ONNX Runtime behind it at concurrency 1, and 1.17-1.20x at 32, of what it
# served with model.pt (as exported or frozen); the two differ by 2.4e-7 in the probabilities
# (docs/benchmarks.md, "What the local Triton runs").
AUTO_RUNTIME = "auto"
RENDERED_HEADER = "# Rendered by serving.triton.render from model_repository/; do not edit.\n"


DEVICES = ("cpu", "cuda")


def cpu_config(
    cfg: mc.ModelConfig,
    instances: int,
    dynamic_batching: bool,
    torch_threads: int,
    runtime: str = DEFAULT_RUNTIME,
    device: str = "cpu",
) -> mc.ModelConfig:
    """The production config (or its ONNX Runtime variant), moved to the Python backend on
    ``instances`` instances of ``torch_threads`` intra-op threads (torch's, or ONNX
    Runtime's), running ``runtime``'s model file; on the CPU, or (``device="cuda"``) on GPU 0:
    the backend then moves the model and each batch there (serving/triton/backend_model.py)."""
    cpu = mc.ModelConfig()
    cpu.CopyFrom(cfg)
    cpu.backend, cpu.platform = "python", ""
    cpu.ClearField("default_model_filename")  # the Python backend's is model.py
    del cpu.instance_group[:]
    if device == "cuda":
        cpu.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=instances, gpus=[0])
    else:
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
    cpu.parameters["RUNTIME"].string_value = runtime
    cpu.parameters["DEVICE"].string_value = device
    return cpu


def _served(source: Path) -> tuple[mc.ModelConfig, dict[int, VersionMetadata]]:
    """The model's production config and the ``metadata.json`` of each served version.

    Raises:
        ConfigFileError: the config is unreadable, a served version lacks a file its
            ``metadata.json`` lists (the message names it), or takes the clinical metadata in
            another encoding than this code's (both named).
    """
    cfg = read_config(source / CONFIG_FILE)
    found = {}
    for version in (v for v in served_versions(cfg) if v in versions(source)):
        try:
            metadata = check_artifacts(source / str(version))
            metadata.check_clinical()
        except (MetadataError, ClinicalEncodingError) as exc:
            raise ConfigFileError(
                f"cannot serve version {version} of {source.name}: {exc}"
            ) from None
        found[version] = metadata
    return cfg, found


def _choose(found: dict[int, VersionMetadata], device: str) -> str:
    """:data:`AUTO_RUNTIME`'s choice for these served versions (:func:`auto_runtime`)."""
    onnx = all("onnx" in m.artifact_files() for m in found.values())
    sizes = {tuple(m.input_size) for m in found.values()}
    return "onnx" if device == "cpu" and found and onnx and len(sizes) == 1 else DEFAULT_RUNTIME


def auto_runtime(source: Path, device: str = "cpu") -> str:
    """What :data:`AUTO_RUNTIME` runs for the model folder ``source``: ``"onnx"`` where every
    served version lists ``model.onnx`` in its ``metadata.json`` and they share one input size
    (ONNX Runtime's config declares one), on the CPU (the onnxruntime package here has no CUDA);
    else ``"torchscript"``.

    Raises:
        ConfigFileError: as :func:`render_repository`, for a version that cannot be served.
    """
    return _choose(_served(source)[1], device)


def _runtime_config(
    source: Path, cfg: mc.ModelConfig, found: dict[int, VersionMetadata], runtime: str
) -> mc.ModelConfig:
    """The model's config for ``runtime``, once every served version has its model file.

    Raises:
        ConfigFileError: a served version lacks the runtime's model file (the message names it).
    """
    for version, metadata in found.items():
        if runtime != "torchscript" and runtime not in metadata.artifact_files():
            raise ConfigFileError(
                f"cannot serve version {version} of {source.name} with the {runtime} runtime: "
                f"{source / str(version) / RUNTIMES[runtime]} does not exist ("
                + (
                    "exported before ONNX, or with --no-onnx"
                    if runtime == "onnx"
                    else "make it with `python -m training.export.precision`"
                )
                + f"; its metadata.json lists {metadata.artifact_files()}). Serve it with the "
                "torchscript runtime, or export the checkpoint again"
            )
    if runtime.startswith("onnx") and found:
        return onnxruntime_config(cfg, next(iter(found.values())).input_size)
    return cfg


def render_repository(  # noqa: PLR0913 (the rendering's knobs)
    repository: Path,
    target: Path,
    instances: int = 1,
    dynamic_batching: bool = True,
    torch_threads: int = 1,
    runtime: str = DEFAULT_RUNTIME,
    device: str = "cpu",
) -> list[str]:
    """Write the CPU variant of every model of ``repository`` under ``target``.

    Safe to call while Triton serves ``target``: files are replaced atomically and a model only
    changes when Triton is asked to (re)load it.

    Args:
        runtime: ``"torchscript"`` runs each version's ``model.pt`` with torch, ``"onnx"``
            its ``model.onnx`` with ONNX Runtime; ``"auto"`` chooses per model
            (:func:`auto_runtime`).
        device: ``"cpu"``, or ``"cuda"``: GPU instances (a CUDA machine).

    Returns:
        The names of the rendered models.

    Raises:
        ConfigFileError: an unknown runtime, an unreadable config, or a served version that
            lacks a model file (see :func:`_served` and :func:`_runtime_config`).
    """
    if runtime not in RUNTIMES and runtime != AUTO_RUNTIME:
        raise ConfigFileError(
            f"unknown runtime {runtime!r}; choose one of {', '.join([*RUNTIMES, AUTO_RUNTIME])}"
        )
    if device not in DEVICES:
        raise ConfigFileError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    repository, target = Path(repository).resolve(), Path(target)
    sources = model_dirs(repository)
    target.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in target.iterdir() if p.is_dir()) - {s.name for s in sources}:
        shutil.rmtree(target / stale)
    for source in sources:
        production, found = _served(source)
        chosen = _choose(found, device) if runtime == AUTO_RUNTIME else runtime
        cfg = cpu_config(
            _runtime_config(source, production, found, chosen),
            instances,
            dynamic_batching,
            torch_threads,
            chosen,
            device,
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
                else:  # gone from the source: the backend must not find a stale link
                    (vdir / name).unlink(missing_ok=True)
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
