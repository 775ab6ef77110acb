"""Triton Python-backend model that runs an exported TorchScript ``model.pt`` on CPU.

Copied as ``model.py`` into each version of the locally rendered repository
(``serving.triton.render``); it is not imported by the project. Tensors cross the backend
boundary through DLPack: with numpy 2, ``pb_utils.Tensor(name, ndarray)`` sends empty tensors.
All requests of one ``execute`` call (a dynamic batch) go through the network as one batch.

A gated version's model returns a tuple ``(probabilities, ood_score)``, an older one the
probabilities alone; as with the native PyTorch backend, an output ``<name>__<i>`` of the
config is the model's ``i``-th returned tensor. Each response carries the outputs its request
asks for (all the config lists when it names none).
"""

import json
import os
import site
import warnings
from typing import Any

import triton_python_backend_utils as pb_utils


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
        import torch
        from torch.utils import dlpack

        self.torch, self.dlpack = torch, dlpack
        torch.set_num_threads(int(params.get("TORCH_NUM_THREADS", "1")))
        self.input_name = config["input"][0]["name"]
        # name -> index of the model's returned tensor (``probabilities__0``, ``ood_score__1``).
        self.outputs = {o["name"]: _index(o["name"], i) for i, o in enumerate(config["output"])}
        self.version = args["model_version"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, "model.pt")
        # The config takes any image size (versions may differ); this version takes its own.
        with open(os.path.join(version_dir, "metadata.json")) as f:
            self.size = tuple(int(v) for v in json.load(f)["input_size"])
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
            )
            self.model = torch.jit.load(path, map_location="cpu").eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        torch, dlpack = self.torch, self.dlpack
        images = [
            dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name).to_dlpack())
            for r in requests
        ]
        fits = [tuple(x.shape[1:3]) == self.size for x in images]
        good = [x for x, ok in zip(images, fits, strict=True) if ok]
        results: list[Any] = []
        if good:
            try:
                with torch.inference_mode():
                    out = self.model(torch.cat(good) if len(good) > 1 else good[0])
            except Exception as exc:  # noqa: BLE001 (per-request error, never crash the model: Triton)
                return [_error(f"model failed: {exc}") for _ in requests]
            results = list(out) if isinstance(out, tuple | list) else [out]
        missing = [n for n, i in self.outputs.items() if i >= len(results) and good]
        if missing:
            message = (
                f"version {self.version} returns {len(results)} output(s), the config lists "
                f"{missing}: promote or roll back with `python -m serving.versions`, which sets "
                "the config's outputs from the version's metadata.json"
            )
            return [_error(message) for _ in requests]
        sizes = [len(x) for x in good]
        parts = iter(zip(*(torch.split(r, sizes) for r in results), strict=True) if good else [])
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
                pb_utils.Tensor.from_dlpack(
                    name, dlpack.to_dlpack(part[self.outputs[name]].contiguous())
                )
                for name in asked
                if name in self.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


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
