"""What the class-activation map costs: the production model (``efficientnet_lite0`` at its
input size) exported twice by ``training.export.export_model`` from the same weights, without
and with the map output (``cam__2``), and run through TorchScript at batch 1 and 32, one
intra-op thread (one Triton instance's), in interleaved time boxes.

    python -m benchmarks --only explain
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from benchmarks.common import Stats
from benchmarks.onnx_bench import _images, _rate
from training.export import export_model
from training.export.cam import network_explainer

MODEL = "efficientnet_lite0"
BATCHES = (1, 32)


def _load(folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()


def run(model: str = MODEL, seconds: float = 6.0, rounds: int = 3) -> dict[str, Any]:
    spec = models.get_spec(model)
    classifier = models.create_classifier(model, pretrained=bool(spec.pretrained)).eval()
    images = _images(spec.input_size)
    before = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_model(classifier, Path(tmp) / "plain", spec.input_size, images[:8])
        explained = export_model(
            classifier,
            Path(tmp) / "cam",
            spec.input_size,
            images[:8],
            explainer=network_explainer(classifier),
        )
        nets = {"without": _load(plain), "with": _load(explained)}
        torch.set_num_threads(1)
        try:
            for batch in BATCHES:
                x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
                got: dict[str, list[Stats]] = {k: [] for k in nets}
                for _ in range(rounds):  # interleaved: both see the same machine load
                    for name, net in nets.items():

                        def call(b: np.ndarray, net: Any = net) -> None:
                            with torch.inference_mode():
                                net(torch.from_numpy(b))

                        got[name].append(_rate(call, x, seconds / rounds))
                rows.append(
                    {
                        "batch": batch,
                        **{k: float(np.median([s.median for s in v])) for k, v in got.items()},
                    }
                )
        finally:
            torch.set_num_threads(before)
    grid = models.get_spec(model).input_size
    return {"model": model, "input_size": list(grid), "rows": rows}


def markdown(res: dict[str, Any]) -> str:
    h, w = res["input_size"]
    lines = [
        f"{res['model']} at {h}x{w}: `model.pt` exported without and with the class-activation "
        "map output (same weights), TorchScript, one thread, images/s, median of interleaved "
        "time boxes.",
        "",
        "| batch | without the map | with the map | time per image |",
        "|---|---|---|---|",
    ]
    for r in res["rows"]:
        change = r["without"] / r["with"] - 1
        lines.append(
            f"| {r['batch']} | {r['without']:.1f} | {r['with']:.1f} | {100 * change:+.1f} % |"
        )
    return "\n".join(lines)
