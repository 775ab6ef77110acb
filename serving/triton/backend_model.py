"""Triton Python-backend model that runs an exported version on CPU: its TorchScript
``model.pt`` with torch, or (config parameter ``RUNTIME: "onnx"``) its ``model.onnx`` with
ONNX Runtime.

Copied as ``model.py`` into each version of the locally rendered repository
(``serving.triton.render``); it is not imported by the project. Tensors cross the backend
boundary through DLPack: with numpy 2, ``pb_utils.Tensor(name, ndarray)`` sends empty tensors.
All requests of one ``execute`` call (a dynamic batch) go through the network as one batch.

Before loading, the version is checked against its ``metadata.json``: every model file its
``artifacts`` lists must be there, and ``model.onnx`` must take ``uint8 [-1, H, W, 3]`` at
the ``input_size`` it records and return the config's outputs; a version that fails does not
load, and the error names the file and what disagrees.

Every input the config declares is passed to the model, in the config's order, which is the
order of the model's arguments (``<name>__<index>``): ``image__0`` alone for an image-only
version, ``image__0`` and ``clinical__1`` (the patient metadata, float32 ``[N, D]``) for a
fusion one, as the native PyTorch backend does.

A gated version's model returns a tuple ``(probabilities, ood_score)``, an explained one
``(probabilities, ood_score or an empty placeholder, cam)``, an older one the probabilities
alone; as with the native PyTorch backend, an output ``<name>__<i>`` of the config is the
model's ``i``-th returned tensor (``model.pt``), and ``model.onnx``'s output of that name (ONNX
Runtime). Each response carries the outputs its request asks for (all the config lists when it
names none); ONNX Runtime computes only those the config lists.
"""

import json
import os
import site
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import triton_python_backend_utils as pb_utils

# metadata.json's artifacts by kind (contracts.triton_config.ARTIFACT_FILES; this file runs in
# Triton's stub and imports nothing of the project), and the kind each runtime runs.
RUNTIME_FILES = {
    "torchscript": "model.pt",
    "onnx": "model.onnx",
    "torchscript_bf16": "model.bf16.pt",  # training.export.precision's reduced copies
    "onnx_int8": "model.int8.onnx",
}
NUM_CLASSES = 7
CAM_OUTPUT = "cam__2"  # contracts.tensors.CAM_OUTPUT_NAME
# What numpy's DLPack capsule destructor reports once Triton has consumed the capsule: Triton
# renames a consumed capsule "used_dlpack", not DLPack's "used_dltensor", so numpy's destructor
# does not recognise it, leaves the tensor alone (Triton's own deleter call frees it) and
# reports this, a traceback in the log for every output. torch's destructor stays silent.
CAPSULE_NOISE = "PyCapsule_GetPointer called with incorrect name"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # The backend stub runs its own interpreter: give it the project's site-packages.
        if params.get("SITE_PACKAGES"):
            site.addsitedir(params["SITE_PACKAGES"])
        # Idle OpenMP threads sleep instead of spinning: on a CPU host that also runs the
        # gateway, spinning threads took 46 ms of CPU per request instead of 16
        # (benchmarks.profile_gateway, 1 instance x 2 threads, docs/benchmarks.md).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.runtime = params.get("RUNTIME", "torchscript")
        threads = int(params.get("TORCH_NUM_THREADS", "1"))
        # DEVICE "cuda" (a GPU instance group: serving/triton/render.py): the instance's GPU.
        self.device = "cpu"
        if params.get("DEVICE") == "cuda":
            self.device = f"cuda:{args.get('model_instance_device_id', '0')}"
        self.input_name = config["input"][0]["name"]
        # Every declared input, in the order of the model's arguments (``<name>__<index>``).
        self.input_names = [i["name"] for i in sorted(config["input"], key=_input_order)]
        # name -> index of the model's returned tensor (``probabilities__0``, ``ood_score__1``).
        self.outputs = {o["name"]: _index(o["name"], i) for i, o in enumerate(config["output"])}
        self.version = args["model_version"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        # The config takes any image size (versions may differ); this version takes its own.
        metadata_path = os.path.join(version_dir, "metadata.json")
        with open(metadata_path) as f:
            metadata = json.load(f)
        self.size = tuple(int(v) for v in metadata["input_size"])
        clinical = metadata.get("clinical") or {}
        self.clinical_dim = clinical.get("dim") if "clinical__1" in self.input_names else None
        explain = metadata.get("explain") or {}
        self.cam_grid = explain.get("grid") if explain.get("output") == CAM_OUTPUT else None
        # Messages name the production files, which the rendered ones link to.
        source = os.path.dirname(os.path.realpath(metadata_path))
        path = _model_file(version_dir, source, metadata, self.runtime)
        if self.runtime.startswith("onnx"):
            self._load_onnx(path, os.path.join(source, RUNTIME_FILES[self.runtime]), threads)
        else:
            self._load_torchscript(path, threads)

    def _load_torchscript(self, path: str, threads: int) -> None:
        import torch
        from torch.utils import dlpack

        self.torch, self.dlpack = torch, dlpack
        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
            )
            model = torch.jit.load(path, map_location=self.device).eval()
            # On the CPU, model.pt runs frozen: weights inlined as constants and batch norm
            # folded into the convolutions, as the reference of docs/benchmarks.md's precision
            # table, where the unfrozen file runs at 0.71x (batch 32) and 0.88x (batch 1).
            # A GPU instance keeps the file as it is.
            if self.device == "cpu" and self.runtime == "torchscript":
                model = torch.jit.freeze(model)
            # model.bf16.pt's float32 convolutions go to oneDNN with prepacked weights: what
            # training.export.precision.as_served makes and its accuracy gate checks. It
            # cannot be saved in that form, so it is made here. Its bfloat16 convolutions are
            # oneDNN's CPU ones already (training.export.precision.fuse_convolutions).
            if self.runtime == "torchscript_bf16":
                if self.device != "cpu":
                    raise ValueError(
                        f"{path} runs oneDNN's CPU convolutions (AMX or AVX-512 bf16): "
                        "serve model.pt (--runtime torchscript) on a GPU"
                    )
                model = torch.jit.optimize_for_inference(model)
                if not _bf16_units(torch):
                    # training.export.precision.bf16_speed_warning, said where operators look.
                    print(
                        f"warning: {path}: this CPU has neither AMX nor AVX-512 bf16: oneDNN "
                        "emulates bfloat16 here and model.bf16.pt runs at about 0.58x the "
                        "fp32 model.pt (docs/benchmarks.md); serve the fp32 version here "
                        "(--runtime onnx or torchscript)",
                        flush=True,
                    )
            self.model = model
        self.run = self._run_torchscript

    def _load_onnx(self, path: str, shown: str, threads: int) -> None:
        import importlib

        import numpy as np

        # Imported by name: onnxruntime ships no type information (mypy checks this file).
        ort = importlib.import_module("onnxruntime")
        self.np = np
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = int(self.device.split(":")[1])
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        elif self.device != "cpu":  # onnxruntime without CUDA (the CPU package): say so
            print(f"warning: no CUDAExecutionProvider in onnxruntime: {path} runs on the CPU")
        self.session = ort.InferenceSession(path, options, providers=providers)
        _quiet_capsule_destructor()
        why = _onnx_mismatch(
            self.session,
            self.input_name,
            self.size,
            list(self.outputs),
            self.cam_grid,
            self.clinical_dim,
        )
        if why is not None:
            raise ValueError(f"{shown} does not fit this version: it has {why}")
        self.run = self._run_onnx

    def _run_torchscript(self, requests: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """``(images, outputs)`` of the requests: the DLPack inputs, and the config's outputs
        the model returned for the fitting ones as one batch (torch tensors by name: the
        ``i``-th returned tensor for ``<name>__<i>``)."""
        torch, dlpack = self.torch, self.dlpack
        inputs = {
            name: [
                dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(r, name).to_dlpack())
                for r in requests
            ]
            for name in self.input_names
        }
        images = inputs[self.input_name]
        fits = [tuple(x.shape[1:3]) == self.size for x in images]
        if not any(fits):
            return images, {}
        with torch.inference_mode():
            args = []
            for name in self.input_names:
                good = [x for x, ok in zip(inputs[name], fits, strict=True) if ok]
                batch = torch.cat(good) if len(good) > 1 else good[0]
                args.append(batch.to(self.device, non_blocking=True))
            out = self.model(*args)
        returned = list(out) if isinstance(out, tuple | list) else [out]
        if self.device != "cpu":  # answered from host memory, whatever Triton's GPU setup
            returned = [t.cpu() for t in returned]
        return images, {n: returned[i] for n, i in self.outputs.items() if i < len(returned)}

    def _run_onnx(self, requests: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """As :meth:`_run_torchscript`, through ONNX Runtime (the outputs of those names), as
        numpy arrays."""
        np = self.np
        inputs = {
            name: [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, name)) for r in requests]
            for name in self.input_names
        }
        images = inputs[self.input_name]
        fits = [tuple(x.shape[1:3]) == self.size for x in images]
        if not any(fits):
            return images, {}
        feed = {}
        for name in self.input_names:
            good = [x for x, ok in zip(inputs[name], fits, strict=True) if ok]
            feed[name] = np.ascontiguousarray(np.concatenate(good) if len(good) > 1 else good[0])
        names = list(self.outputs)
        out = self.session.run(names, feed)
        return images, dict(zip(names, out, strict=True))

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            images, results = self.run(requests)
        except Exception as exc:  # noqa: BLE001 (per-request error, never crash the model: Triton)
            return [_error(f"model failed: {exc}") for _ in requests]
        fits = [tuple(x.shape[1:3]) == self.size for x in images]
        good = any(fits)
        missing = [n for n in self.outputs if n not in results and good]
        if missing:
            message = (
                f"version {self.version} returns no output {missing} the config lists (it "
                f"returns {sorted(results)}): promote or roll back with `python -m "
                "serving.versions`, which sets the config's outputs from the version's "
                "metadata.json"
            )
            return [_error(message) for _ in requests]
        sizes = [len(x) for x, ok in zip(images, fits, strict=True) if ok]
        split = {name: _split(tensor, sizes) for name, tensor in results.items()}
        parts = iter(
            [{name: pieces[j] for name, pieces in split.items()} for j in range(len(sizes))]
        )
        responses = []
        for request, image, ok in zip(requests, images, fits, strict=True):
            if not ok:
                height, width = self.size
                responses.append(
                    _error(
                        f"unexpected shape for input '{self.input_name}': {list(image.shape)}; "
                        f"this version takes [-1, {height}, {width}, 3] (its metadata.json)"
                    )
                )
                continue
            part = next(parts)
            asked = list(request.requested_output_names()) or list(self.outputs)
            tensors = [
                pb_utils.Tensor.from_dlpack(name, self._capsule(part[name]))
                for name in asked
                if name in part
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _capsule(self, tensor: Any) -> Any:
        """A DLPack capsule of ``tensor`` (a torch tensor or a numpy array), made contiguous."""
        if self.runtime.startswith("onnx"):
            return self.np.ascontiguousarray(tensor).__dlpack__()
        return tensor.contiguous().__dlpack__()


def _quiet_capsule_destructor() -> None:
    """Drop :data:`CAPSULE_NOISE` reports (numpy's capsules after Triton consumed them), pass
    every other unraisable exception on to the hook in place."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_capsules", False):
        return

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is ValueError and str(unraisable.exc_value) == CAPSULE_NOISE:
            return
        previous(unraisable)

    hook.quiets_capsules = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _split(batch: Any, sizes: list[int]) -> list[Any]:
    """``batch`` cut into consecutive parts of ``sizes`` rows (torch tensor or numpy array)."""
    parts, start = [], 0
    for size in sizes:
        parts.append(batch[start : start + size])
        start += size
    return parts


def _model_file(version_dir: str, source: str, metadata: dict[str, Any], runtime: str) -> str:
    """The path of the file ``runtime`` runs, once every model file the version's
    ``metadata.json`` lists is there (a version without ``artifacts`` has ``model.pt``).

    Raises:
        ValueError: an unknown runtime, or a missing file (named with its production path).
    """
    if runtime not in RUNTIME_FILES:
        raise ValueError(f"RUNTIME {runtime!r} is not one of {', '.join(RUNTIME_FILES)}")
    artifacts = metadata.get("artifacts") or {"torchscript": RUNTIME_FILES["torchscript"]}
    for kind, name in artifacts.items():  # the kinds the rendering links (it checked others)
        if kind in RUNTIME_FILES and not os.path.isfile(os.path.join(version_dir, name)):
            raise ValueError(
                f"{os.path.join(source, name)} is missing, but {source}/metadata.json lists the "
                f"artifacts {artifacts}: the {kind} model of this version is gone; export the "
                "checkpoint again, or delete the version"
            )
    if runtime not in artifacts:
        raise ValueError(
            f"{os.path.join(source, RUNTIME_FILES[runtime])} does not exist: this version has "
            f"{artifacts} (exported before {runtime}, or without it); serve it with another "
            "runtime or export the checkpoint again"
        )
    return os.path.join(version_dir, artifacts[runtime])


def _onnx_mismatch(
    session: Any,
    input_name: str,
    size: Sequence[int],
    outputs: list[str],
    cam_grid: Sequence[int] | None = None,
    clinical_dim: int | None = None,
) -> str | None:
    """What of an ONNX model's inputs and outputs disagrees with the version (``uint8
    [-1, H, W, 3]`` in as ``input_name``, ``float32 [-1, 7]`` / ``[-1, 1]`` /
    ``[-1, 7, h, w]`` (``cam_grid``, metadata.json's ``explain.grid``) out under the config's
    names, ``-1`` a dynamic batch), or None. As ``training.export.onnx``'s check."""

    def dims(shape: Sequence[Any]) -> list[int]:
        return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]

    want_in = [(input_name, "tensor(uint8)", [-1, *size, 3])]
    if clinical_dim is not None:  # a fusion version's second input (contracts.tensors)
        want_in.append(("clinical__1", "tensor(float)", [-1, int(clinical_dim)]))
    got_in = [(i.name, i.type, dims(i.shape)) for i in session.get_inputs()]
    if got_in != want_in:
        return f"inputs {got_in or 'none'}; its metadata.json's input_size says {want_in}"
    got_out = {o.name: (o.type, dims(o.shape)) for o in session.get_outputs()}
    for name in outputs:
        if name == CAM_OUTPUT and cam_grid is None:
            return f"no explain.grid in its metadata.json, but the config lists {name!r}"
        if name == CAM_OUTPUT and cam_grid is not None:
            want = ("tensor(float)", [-1, NUM_CLASSES, *cam_grid])
        else:
            want = ("tensor(float)", [-1, 1 if name.startswith("ood_score") else NUM_CLASSES])
        if got_out.get(name) != want:
            return f"outputs {got_out}; the config wants {name!r} as {want}"
    return None


def _bf16_units(torch: Any) -> bool:
    """Whether this CPU has AMX or AVX-512 bf16 (training.export.precision.bf16_units)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # torch's private probes moved: the kernel's flags
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
        except OSError:
            return False
        return "amx_bf16" in flags or "avx512_bf16" in flags


def _input_order(tensor: dict[str, Any]) -> int:
    """An input's place among the model's arguments: its ``__<index>`` (0 without one)."""
    name = str(tensor.get("name", ""))
    suffix = name.rsplit("__", 1)[-1]
    return int(suffix) if "__" in name and suffix.isdigit() else 0


def _index(name: str, position: int) -> int:
    """The returned tensor an output names: ``<name>__<i>`` is the ``i``-th, as in Triton's
    PyTorch backend; a name without the suffix is taken by its position in the config."""
    suffix = name.rsplit("__", 1)[-1]
    return int(suffix) if "__" in name and suffix.isdigit() else position


def _error(message: str) -> Any:
    """A per-request error response; INVALID_ARG where this Triton's Python backend has codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = (
        pb_utils.TritonError(message, code)
        if code is not None and "shape" in message
        else (pb_utils.TritonError(message))
    )
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
