"""ONNX Runtime (CPU execution provider) against TorchScript on this CPU, on the files one export
writes: ``model.onnx`` and ``model.pt`` of the production model (``efficientnet_lite0`` at its
input size, ImageNet weights with a new head), exported by ``training.export.export_model``
into a temporary repository.

- Inference: images/s at batch 1 and 32, with one and two intra-op threads (the local Triton
  runs two instances of one thread on a 2-core host), the ratio ONNX Runtime / TorchScript.
- Export: the seconds each ONNX exporter of torch takes for the same module (the TorchScript-
  based one, ``dynamo=False``, which export uses first, and the ``torch.export``-based one).
- Parity: eager against ONNX Runtime on the real photos, as export records it.

    python -m benchmarks --only onnx
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import models
from benchmarks.common import Stats, repeat, stats
from contracts.metadata import read_metadata
from contracts.tensors import INPUT_NAME, OUTPUT_NAME
from training.export import ProbabilityModel, default_parity_dir, export_model, parity_batch
from training.export.onnx import session, to_onnx

MODEL = "efficientnet_lite0"
BATCHES = (1, 32)
THREADS = (1, 2)


def _images(size: tuple[int, int]) -> np.ndarray:
    """Real photos where the data is configured, else random ones (speed is the same)."""
    try:
        return parity_batch(default_parity_dir(), size, n=32)
    except (ValueError, OSError):
        return np.random.default_rng(0).integers(0, 256, (32, *size, 3), dtype=np.uint8)


def _rate(run: Any, batch: np.ndarray, seconds: float) -> Stats:
    """Images/s of ``run(batch)`` calls in time boxes of ``seconds / 3``, median of three."""

    def once() -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            run(batch)
            n += len(batch)
        return n / (time.perf_counter() - start)

    return repeat(once, repeats=3, warmup=1)


def inference(folder: Path, images: np.ndarray, seconds: float) -> list[dict[str, Any]]:
    """Both files of ``folder`` at each thread count and batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()
    rows = []
    before = torch.get_num_threads()
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            sess = session(folder / "model.onnx", threads=threads)

            def torchscript(x: np.ndarray) -> None:
                with torch.inference_mode():
                    scripted(torch.from_numpy(x))

            def onnxruntime(x: np.ndarray, sess: Any = sess) -> None:
                sess.run([OUTPUT_NAME], {INPUT_NAME: x})

            for batch in BATCHES:
                x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
                ts, ort = _rate(torchscript, x, seconds), _rate(onnxruntime, x, seconds)
                rows.append({"threads": threads, "batch": batch, "torchscript": ts, "onnx": ort})
    finally:
        torch.set_num_threads(before)
    return rows


def export_times(model: nn.Module, example: torch.Tensor, repeats: int = 2) -> dict[str, Stats]:
    """Seconds of each exporter converting ``model`` (after one untimed warm-up each)."""
    out = {}
    for how in ("torchscript", "dynamo"):
        to_onnx(model, example, [OUTPUT_NAME], (how,))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            to_onnx(model, example, [OUTPUT_NAME], (how,))
            samples.append(time.perf_counter() - start)
        out[how] = stats(samples)
    return out


def run(model: str = MODEL, seconds: float = 6.0) -> dict[str, Any]:
    """All figures as a dict (:func:`markdown` renders it)."""
    size = models.get_spec(model).input_size
    pretrained = models.get_spec(model).pretrained
    classifier = models.create_classifier(model, pretrained=bool(pretrained)).eval()
    images = _images(size)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = export_model(classifier, tmp, size, images[:8])
        export_s = time.perf_counter() - start
        meta = read_metadata(folder)
        rows = inference(folder, images, seconds)
    example = torch.from_numpy(images[:2])
    return {
        "model": model,
        "input_size": list(size),
        "export_s": export_s,
        "exporters": export_times(ProbabilityModel(classifier).eval(), example),
        "parity": (meta.parity or {}).get("onnx", {}),
        "onnx": meta.onnx or {},
        "rows": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    h, w = res["input_size"]
    facts, parity, ex = res["onnx"], res["parity"], res["exporters"]
    lines = [
        f"{res['model']} at {h}x{w}, uint8 NHWC in, probabilities out: the `model.pt` and "
        f"`model.onnx` of one `export_model` (opset {facts.get('opset')}, onnxruntime "
        f"{facts.get('onnxruntime_version')}, CPU execution provider, graph optimisations on; "
        "TorchScript under `torch.inference_mode()`). Images/s, median (min-max) of 3 time "
        "boxes after a warm-up.",
        "",
        "| threads | batch | TorchScript img/s | ONNX Runtime img/s | ONNX Runtime / TorchScript |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ratio = r["onnx"].median / r["torchscript"].median
        lines.append(
            f"| {r['threads']} | {r['batch']} | {r['torchscript'].fmt()} | {r['onnx'].fmt()} | "
            f"{ratio:.2f}x |"
        )
    lines += [
        "",
        f"Export of the version (TorchScript + ONNX, both parity checks): {res['export_s']:.1f} s. "
        f"ONNX conversion alone: TorchScript-based exporter {ex['torchscript'].fmt(2)} s, "
        f"`torch.export`-based (dynamo) {ex['dynamo'].fmt(2)} s; export uses the first "
        "(the second when the first fails). Eager vs ONNX Runtime on "
        f"{'the real photos' if parity else 'the parity images'}: max abs difference of the "
        f"probabilities {parity.get('max_abs_diff', float('nan')):.2g} "
        f"(tolerance {parity.get('tolerance', float('nan')):g}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
