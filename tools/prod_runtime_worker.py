"""Runs INSIDE the side environment of ``python -m tools.prod_runtime`` (torch + numpy only, no
project package): loads each TorchScript file with that torch, as Triton's PyTorch backend loads
``model.pt``, runs it on the prepared photos and saves what it returns.

    <side-env>/bin/python -I tools/prod_runtime_worker.py JOB.json

``JOB.json``: ``{"result": path, "passes": int, "models": [{"model": model.pt, "images":
batch.npy, "out": outputs.npz}, ...]}``. For each model, ``out`` gets ``batch_first`` and
``batch_last`` (the first and the last of ``passes`` calls on the whole batch: the JIT's
profiling executor optimises the graph after its first calls, as it does in Triton) and
``single`` (the first image alone), one array per output (``batch_last_0``, ...). ``result``
gets the torch version and, per model, the number of outputs or the error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def run_one(model_path: str, images_path: str, out_path: str, passes: int) -> dict[str, Any]:
    """Load and run one model; ``{"outputs": n}`` or ``{"error": "..."}``."""
    try:
        model = torch.jit.load(model_path, map_location="cpu")
        model.eval()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return {"error": f"torch.jit.load failed: {type(exc).__name__}: {exc}"}
    try:
        batch = torch.from_numpy(np.load(images_path))
        arrays: dict[str, np.ndarray] = {}
        first: tuple[torch.Tensor, ...] = ()
        with torch.inference_mode():  # the production config's INFERENCE_MODE: true
            for i in range(passes):
                outputs = _tuple(model(batch))
                if i == 0:
                    first = outputs
            single = _tuple(model(batch[:1]))
        for label, tensors in (("batch_first", first), ("batch_last", outputs), ("single", single)):
            for j, tensor in enumerate(tensors):
                arrays[f"{label}_{j}"] = tensor.detach().cpu().numpy()
        np.savez(out_path, **arrays)
        return {"outputs": len(outputs)}
    except Exception as exc:  # noqa: BLE001 - a model that loads but does not run is the finding
        return {"error": f"forward failed: {type(exc).__name__}: {exc}"}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    passes = max(1, int(job.get("passes", 3)))
    results = [run_one(m["model"], m["images"], m["out"], passes) for m in job["models"]]
    report = {"torch": torch.__version__, "numpy": np.__version__, "models": results}
    Path(job["result"]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
