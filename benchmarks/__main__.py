"""``make bench``: run every benchmark and rewrite docs/benchmarks.md.

    python -m benchmarks                 # everything
    python -m benchmarks --only triton   # some sections; the others keep their last text

Each section's markdown is kept in docs/benchmarks/<section>.md and the page is assembled
from them, so running one section does not erase the others' figures. Hand-written parts
(docs/benchmarks/notes-*.md: profiles, before-and-after records) are appended as they are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import machine

DOCS = Path(__file__).resolve().parents[1] / "docs"
PARTS = DOCS / "benchmarks"


def _data() -> str:
    from benchmarks import data_pipeline

    ham = os.environ.get("HAM10000_DIR")
    if not ham:
        return "HAM10000_DIR is not set: skipped."
    res = data_pipeline.measure(ham)
    ver = data_pipeline.measure_version(ham)
    return (
        f"{res['images']} real HAM10000 JPEGs (200x150), one process, median of 3 runs.\n\n"
        "| stage | images/s |\n|---|---|\n"
        f"| decode, OpenCV | {res['decode_cv2_per_s']} |\n"
        f"| decode, Pillow | {res['decode_pil_per_s']} |\n"
        f"| decode + train augmentation at {res['size'][0]}x{res['size'][1]} | "
        f"{res['decode_augment_per_s']} |\n\n"
        f"Loading and validating the {ver['images']} images' index: "
        f"{ver['load_validate_s']:.1f} s. "
        f"Dataset version: cold {ver['version_cold_s']:.1f} s, warm {ver['version_warm_s']:.2f} s "
        "(per-file hashes cached by path, size and mtime)."
    )


def _models() -> str:
    from benchmarks import data_pipeline, models_bench
    from benchmarks.common import stats

    ham = os.environ.get("HAM10000_DIR")
    data_rate = None
    if ham:
        r = data_pipeline.measure(ham, n=256)
        data_rate = stats([float(r["decode_augment_per_s"])])
    return models_bench.markdown(models_bench.run(), data_rate)


def _image() -> str:
    from benchmarks import image_path

    return image_path.markdown(image_path.run())


def _triton() -> str:
    from benchmarks import triton_bench

    return triton_bench.markdown(triton_bench.run())


def _onnx() -> str:
    from benchmarks import onnx_bench

    return onnx_bench.markdown(onnx_bench.run())


def _explain() -> str:
    from benchmarks import explain_bench

    return explain_bench.markdown(explain_bench.run())


def _precision() -> str:
    from benchmarks import precision_bench

    return precision_bench.markdown(precision_bench.run())


def _gateway() -> str:
    from benchmarks import gateway_bench

    return gateway_bench.markdown(gateway_bench.run())


SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "data": ("Data pipeline (decode + augment, no model)", _data),
    "models": ("Models: training steps and inference variants", _models),
    "image": ("The image path: decode and resize of a full-size JPEG against the model", _image),
    "triton": ("Triton on this CPU: dynamic batching on and off, one and two instances", _triton),
    "onnx": ("ONNX Runtime against TorchScript: the two files of one export, on this CPU", _onnx),
    "explain": ("What the class-activation map output costs the exported model", _explain),
    "precision": ("Reduced precision on AMX: bf16 and int8 against fp32 (issue #14)", _precision),
    "gateway": (
        "Serving end to end: gateway + Triton, the eager FastAPI baseline, Triton direct",
        _gateway,
    ),
}


def assemble(command: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks",
        "",
        f"Machine of the last run: {machine()}.",
        f"Command: `{command}` (page assembled {now}; each section says when and on which "
        "machine it ran: compare figures of one section, never across machines).",
        "All figures are medians over repeated runs with the spread (min-max) where given;",
        "ratios compare alternatives measured in the same run on the same machine.",
        "",
    ]
    for name, (title, _) in SECTIONS.items():
        part = PARTS / f"{name}.md"
        body = part.read_text().strip() if part.exists() else "Not run yet."
        out += [f"## {title}", "", body, ""]
    gpu = PARTS / "gpu.md"  # make bench-gpu, on a CUDA machine: kept until it runs again
    out += ["## GPU (`make bench-gpu`)", ""]
    out += [gpu.read_text().strip() if gpu.exists() else "Not run yet: no GPU lent so far.", ""]
    for part in sorted(PARTS.glob("notes-*.md")):  # hand-written: profiles, before and after
        out += [part.read_text().strip(), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="sections to run")
    args = p.parse_args(argv)
    PARTS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or list(SECTIONS):
        title, fn = SECTIONS[name]
        print(f"== {title}", flush=True)
        start = time.perf_counter()
        try:
            body = fn()
        except Exception:  # noqa: BLE001 (a broken benchmark must not hide the others' figures)
            traceback.print_exc()
            failed.append(name)
            continue
        took = time.perf_counter() - start
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        # The machine with the time: the project's machine has changed between sessions (an
        # Intel Xeon with AMX, then an AMD EPYC without), and sections are rerun one at a time.
        (PARTS / f"{name}.md").write_text(
            f"{body}\n\n_Ran {stamp} in {took:.0f} s on {machine()}._\n"
        )
        print(body, flush=True)
    cmd = "make bench" if not args.only else f"python -m benchmarks --only {' '.join(args.only)}"
    (DOCS / "benchmarks.md").write_text(assemble(cmd))
    print(f"wrote {DOCS / 'benchmarks.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
