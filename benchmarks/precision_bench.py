"""Reduced precision on this CPU's AMX units (issue #14): the served model in bf16 and int8
against fp32 frozen TorchScript, speed and agreement.

The model is ``make run``'s checkpoint (``runs/default/checkpoints/best.ckpt``, or
``PRECISION_BENCH_CHECKPOINT``) exported as served (gate and class activation map) into a
temporary repository, or an exported version folder given as ``PRECISION_BENCH_VERSION``.

- Speed: images/s at batch 32 and 1, one and two threads, every candidate in the same time
  boxes, interleaved (round-robin, median of :data:`ROUNDS` rounds): ``model.pt`` as served,
  the same frozen (the reference), the same with its convolutions fused as ``model.bf16.pt``'s
  are (what the fusion is worth without bf16), frozen under ``torch.autocast`` bf16,
  ``model.bf16.pt`` (``training.export.precision``) without the fusion (as before) and with it,
  ONNX Runtime on ``model.onnx`` and on its int8 copy.
- Accuracy: on the checkpoint's lesion-grouped TEST split (the split of docs/results.md), each
  candidate's argmax against the fp32 reference's: top-1 agreement, balanced accuracy of both,
  the largest probability difference, the out-of-distribution score's largest relative
  difference and how many gate decisions stay the same.
- The export-time gate (validation split): what ``python -m training.export.precision`` said
  for bf16 and int8.

    python -m benchmarks --only precision
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import stats
from contracts.errors import ConfigError
from contracts.labels import CLASS_INDEX
from contracts.metadata import read_metadata
from training.export.precision import (
    Runner,
    Split,
    accuracy_check,
    add_precision,
    as_served,
    bf16_torchscript,
    fuse_convolutions,
    int8_onnx,
    onnx_runner,
    read_images,
    split_for_checkpoint,
    torchscript_runner,
)

CHECKPOINT = Path("runs/default/checkpoints/best.ckpt")
BATCHES = (32, 1)
THREADS = (1, 2)
ROUNDS = 7
BOX_S = 0.7


def _version(tmp: Path) -> Path:
    given = os.environ.get("PRECISION_BENCH_VERSION")
    if given:
        return Path(given)
    from training.export.cli import export

    checkpoint = Path(os.environ.get("PRECISION_BENCH_CHECKPOINT", CHECKPOINT))
    return export(checkpoint, tmp / "repo")


def _load(path: Path, freeze: bool) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu").eval()
    return torch.jit.freeze(model) if freeze else model


def _fused_fp32(path: Path) -> Any:
    """The frozen fp32 model with its convolutions fused as model.bf16.pt's are: what the
    fusion alone is worth, without bfloat16."""
    model = _load(path, True)
    fuse_convolutions(model, dtypes=(torch.float32,))
    return model


def _autocast(model: Any) -> Runner:
    run = torchscript_runner(model)

    def go(images: np.ndarray) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(images)

    return go


def candidates(folder: Path, int8: bytes, threads: int) -> dict[str, Runner]:
    """name -> runner, the reference first."""
    frozen = _load(folder / "model.pt", True)
    return {
        "fp32 TorchScript frozen (reference)": torchscript_runner(frozen),
        "fp32 TorchScript as served (model.pt)": torchscript_runner(
            _load(folder / "model.pt", False)
        ),
        "bf16 autocast, frozen TorchScript": _autocast(frozen),
        "fp32 frozen, convolutions fused (oneDNN pointwise)": torchscript_runner(
            _fused_fp32(folder / "model.pt")
        ),
        "bf16 model.bf16.pt unfused, as served (before)": torchscript_runner(
            as_served(bf16_torchscript(folder / "model.pt", fuse=False))
        ),
        "bf16 model.bf16.pt (first 3 convolutions + map fp32)": torchscript_runner(
            bf16_torchscript(folder / "model.pt")
        ),
        "bf16 model.bf16.pt as served (optimize_for_inference)": torchscript_runner(
            as_served(bf16_torchscript(folder / "model.pt"))
        ),
        "fp32 ONNX Runtime (model.onnx)": onnx_runner(folder / "model.onnx", threads),
        "int8 ONNX Runtime (QDQ conv+ReLU6)": onnx_runner(int8, threads),
    }


def speed(folder: Path, int8: bytes, images: np.ndarray) -> list[dict[str, Any]]:
    """Images/s of every candidate, interleaved in round-robin time boxes."""
    rows = []
    before = torch.get_num_threads()
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            runners = candidates(folder, int8, threads)
            for batch in BATCHES:
                x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
                samples: dict[str, list[float]] = {name: [] for name in runners}
                for run in runners.values():
                    run(x)  # warm-up (freezing, oneDNN primitives)
                for _ in range(ROUNDS):
                    for name, run in runners.items():
                        n, start = 0, time.perf_counter()
                        while time.perf_counter() - start < BOX_S:
                            run(x)
                            n += batch
                        samples[name].append(n / (time.perf_counter() - start))
                reference = samples[next(iter(runners))]
                rows.append(
                    {
                        "threads": threads,
                        "batch": batch,
                        "rates": {k: stats(v) for k, v in samples.items()},
                        # Each round's rate over the reference's of the same round: a load
                        # that comes and goes (the CPU is shared) hits both of a pair alike.
                        "ratios": {
                            k: stats([a / b for a, b in zip(v, reference, strict=True)])
                            for k, v in samples.items()
                        },
                    }
                )
    finally:
        torch.set_num_threads(before)
    return rows


def accuracy(folder: Path, int8: bytes, test: Split, ood_threshold: float | None) -> dict[str, Any]:
    """Every reduced candidate against the frozen fp32 reference on the test split."""
    torch.set_num_threads(2)
    runners = candidates(folder, int8, threads=2)
    reference = runners.pop("fp32 TorchScript frozen (reference)")
    runners.pop("fp32 TorchScript as served (model.pt)")
    return {
        name: accuracy_check(reference, run, test.val_images, test.val_labels, ood_threshold)
        for name, run in runners.items()
    }


def _test_split(checkpoint: str, size: tuple[int, int]) -> Split:
    from training.recorded_split import datamodule_hparams, rebuild_split

    split = rebuild_split(datamodule_hparams(checkpoint), size)
    test = split.splits["test"]
    return Split(
        read_images(list(test["path"]), size), np.array([CLASS_INDEX[d] for d in test["label"]])
    )


def _gate(folder: Path, precision: str, split: Split) -> dict[str, Any]:
    """What the export-time gate said (figures, or the refusal)."""
    with tempfile.TemporaryDirectory() as tmp:
        import shutil

        copy = Path(tmp) / "m" / "1"
        shutil.copytree(folder, copy)
        try:
            made = add_precision(copy, precision, split)
        except ConfigError as exc:
            return {"refused": str(exc)}
        return dict(read_metadata(made).extra["precision"][precision])


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _version(Path(tmp))
        meta = read_metadata(folder)
        checkpoint = str((meta.checkpoint or {}).get("path") or CHECKPOINT)
        size = meta.input_size
        val = split_for_checkpoint(checkpoint, size, calibration=200)
        start = time.perf_counter()
        int8 = int8_onnx(folder / "model.onnx", val.calibration)  # type: ignore[arg-type]
        quantise_s = time.perf_counter() - start
        gates = {p: _gate(folder, p, val) for p in ("bf16", "int8")}
        test = _test_split(checkpoint, size)
        acc = accuracy(folder, int8, test, meta.ood_threshold())
        load_before = os.getloadavg()[0]
        rows = speed(folder, int8, test.val_images[:32])
        load_after = os.getloadavg()[0]
    return {
        "size": size,
        "checkpoint": checkpoint,
        "test_images": len(test.val_images),
        "val_images": len(val.val_images),
        "quantise_s": quantise_s,
        "gates": gates,
        "accuracy": acc,
        "rows": rows,
        "load": (load_before, load_after),
    }


def _amx() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split()
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512_vnni"))


def markdown(res: dict[str, Any]) -> str:
    h, w = res["size"]
    names = list(res["rows"][0]["rates"])
    lines = [
        f"The served model (`{res['checkpoint']}` exported as `make run` serves it: EfficientNet-"
        f"Lite0 at {h}x{w}, knn out-of-distribution score, class activation map), uint8 NHWC in. "
        f"CPU flags: {_amx()}. Images/s, median (min-max) of {ROUNDS} boxes of {BOX_S:g} s, all "
        "candidates of a row interleaved round-robin in the same run; the ratio is the median "
        "(min-max) over the rounds of each round's rate over the frozen fp32 TorchScript's in "
        "the same round. The 1-minute load average was "
        f"{res['load'][0]:.1f} before the timing and {res['load'][1]:.1f} after it (on 2 cores; "
        "above 2, other work shared them: see the spread, and compare within a row).",
        "",
        "| threads | batch | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in res["rows"]:
        cells = [
            f"{s.fmt()}; **{q.median:.2f}x** ({q.low:.2f}-{q.high:.2f})"
            for s, q in zip(r["rates"].values(), r["ratios"].values(), strict=True)
        ]
        lines.append(f"| {r['threads']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Against fp32 on the lesion-grouped TEST split ({res['test_images']} images, the split "
        "of docs/results.md), argmax of each against the frozen fp32 model's:",
        "",
        "| variant | top-1 agreement | balanced accuracy (fp32 -> variant) | max abs diff of the "
        "probabilities | OOD score max rel. diff | gate decisions unchanged |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in res["accuracy"].items():
        lines.append(
            f"| {name} | {f['agreement']:.2%} | {f['balanced_accuracy_reference']:.4f} -> "
            f"{f['balanced_accuracy']:.4f} ({-f['balanced_accuracy_drop']:+.4f}) | "
            f"{f['max_abs_diff']:.3f} | {f.get('ood_max_rel_diff', float('nan')):.3f} | "
            f"{f.get('ood_decisions_same', float('nan')):.2%} |"
        )
    lines += [
        "",
        f"The export-time gate (`python -m training.export.precision`, validation split, "
        f"{res['val_images']} images; int8 calibrated on 200 training images, quantisation "
        f"{res['quantise_s']:.0f} s):",
        "",
    ]
    for precision, g in res["gates"].items():
        if "refused" in g:
            lines.append(f"- {precision}: refused: {g['refused']}")
        else:
            lines.append(
                f"- {precision}: written, agreement {g['agreement']:.2%}, balanced accuracy "
                f"{g['balanced_accuracy_reference']:.4f} -> {g['balanced_accuracy']:.4f}, max abs "
                f"diff {g['max_abs_diff']:.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
