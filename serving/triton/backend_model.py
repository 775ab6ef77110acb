"""Triton Python-backend model that runs an exported TorchScript ``model.pt`` on CPU.

Copied as ``model.py`` into each version of the locally rendered repository
(``serving.triton.render``); it is not imported by the project. Tensors cross the backend
boundary through DLPack: with numpy 2, ``pb_utils.Tensor(name, ndarray)`` sends empty tensors.
All requests of one ``execute`` call (a dynamic batch) go through the network as one batch.
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
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
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
        try:
            with torch.inference_mode():
                probs = self.model(torch.cat(images) if len(images) > 1 else images[0])
        except Exception as exc:  # reported per request, never raised (Triton's contract)
            error = pb_utils.TritonError(f"model failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        for part in torch.split(probs, [len(x) for x in images]):
            tensor = pb_utils.Tensor.from_dlpack(
                self.output_name, dlpack.to_dlpack(part.contiguous())
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
