"""``make bench-gpu``: the GPU path end to end in one script, within 10 minutes on one GPU.

1. **Training speed** of the GPU recipe's network (configs/gpu.yaml: EfficientNet-Lite2 at
   150x200, batch 128, channels-last) in bf16 autocast and in fp32, on random images: images/s
   and the ratio, measured after a warm-up.
2. **The real pipeline**, a few hundred steps of ``python -m training fit --config
   configs/gpu.yaml`` (Lightning, ``bf16-mixed``, the real data), then ``python -m training
   export`` of its checkpoint (TorchScript + ONNX, parity, thresholds, gate).
3. **Serving**: the real tritonserver with the exported model on the GPU (Python backend,
   ``--device cuda``), the gateway in front, and the gateway benchmark's four targets
   (benchmarks/gateway_bench.py) at concurrency 1, 8, 32 and 64.

It writes ``docs/benchmarks/gpu.md`` with the device's name; ``make bench`` then shows it as
the GPU section. Without CUDA it stops, unless ``--device cpu``: a dry run of every path at
toy sizes (compact CNN, 48x64, a few steps, exported without the gate, whose statistics take
minutes on a CPU) whose figures go to ``.cache/bench-gpu-cpu.md``, never into the docs: how
this script is checked on a machine without a GPU (tests/benchmarks/test_gpu_dry_run.py).

    python -m benchmarks.gpu [--device auto|cuda|cpu] [--steps 300] [--requests 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gpu.yaml"
DOCS_PART = ROOT / "docs" / "benchmarks" / "gpu.md"
DRY_RUN_PART = ROOT / ".cache" / "bench-gpu-cpu.md"


@dataclass(frozen=True)
class Plan:
    """What one run does on its device: the real recipe on CUDA, toy sizes on the CPU."""

    device: str
    model: str
    image_size: tuple[int, int]
    batch: int
    speed_steps: int
    fit_steps: int
    workers: int
    concurrencies: tuple[int, ...]
    requests: int

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.device == "cuda" else "32-true"


def plan(device: str, steps: int, requests: int) -> Plan:
    recipe = yaml.safe_load(CONFIG.read_text())
    if device == "cuda":
        return Plan(
            device,
            recipe["model"]["model_name"],
            tuple(recipe["model"]["image_size"]),
            recipe["data"]["batch_size"],
            speed_steps=30,
            fit_steps=steps,
            workers=recipe["data"]["num_workers"],
            concurrencies=(1, 8, 32, 64),
            requests=requests,
        )
    return Plan(device, "compact_cnn", (48, 64), 8, 3, 6, 0, (1, 8), min(requests, 20))


def training_speed(p: Plan) -> dict[str, float]:
    """Images/s of full training steps (forward, backward, AdamW) in bf16 autocast and fp32."""
    import torch

    return {"bf16": _steps_per_s(p, torch.bfloat16), "fp32": _steps_per_s(p, None)}


def _steps_per_s(p: Plan, dtype: Any) -> float:
    import torch
    import torch.nn as nn

    import models

    torch.manual_seed(0)
    model = models.create_classifier(p.model).to(p.device).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randint(0, 256, (p.batch, *p.image_size, 3), dtype=torch.uint8, device=p.device)
    y = torch.randint(0, 7, (p.batch,), device=p.device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(p.device, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: kernels chosen, memory allocated
        step()
    _sync(p.device)
    start = time.perf_counter()
    for _ in range(p.speed_steps):
        step()
    _sync(p.device)
    return p.batch * p.speed_steps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _run(cmd: list[str], log: Path) -> float:
    """Run a project command, its output to ``log``; its wall time. Raises with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as f:
        status = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd[2:5])} ... exited with {status}:\n{tail}")
    return time.perf_counter() - start


def pipeline(p: Plan, tmp: Path) -> dict[str, Any]:
    """Fit a few steps of the recipe with Lightning, then export the checkpoint."""
    run_dir, repo = tmp / "run", tmp / "repo"
    height, width = p.image_size
    fit = [
        sys.executable, "-m", "training", "fit", "--config", str(CONFIG),
        f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={p.fit_steps}",
        "--trainer.max_epochs=-1", "--trainer.limit_val_batches=4", "--trainer.logger=false",
        f"--trainer.accelerator={'gpu' if p.device == 'cuda' else 'cpu'}",
        f"--trainer.precision={p.precision}", f"--model.model_name={p.model}",
        f"--model.image_size=[{height}, {width}]", f"--data.batch_size={p.batch}",
        f"--data.num_workers={p.workers}",
    ]  # fmt: skip
    if p.device != "cuda":
        fit += ["--model.pretrained=false", f"--trainer.val_check_interval={p.fit_steps}"]
    fit_s = _run(fit, tmp / "fit.log")
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    export = [
        sys.executable, "-m", "training", "export", "--checkpoint", str(checkpoint),
        "--repository", str(repo),
    ]  # fmt: skip
    if p.device != "cuda":  # the gate's statistics over every training image: minutes on a CPU
        export.append("--no-gate")
    export_s = _run(export, tmp / "export.log")
    return {
        "fit_steps": p.fit_steps,
        "fit_s": fit_s,
        "fit_images_per_s": p.fit_steps * p.batch / fit_s,  # start-up and validation included
        "export_s": export_s,
        "repository": repo / "skin_lesion",
    }


def serving(p: Plan, repository: Path) -> dict[str, Any]:
    """The gateway benchmark against Triton serving ``repository`` on the device."""
    from benchmarks import gateway_bench
    from serving.triton.server import TritonOptions

    options = TritonOptions(instances=1, torch_threads=1, device=p.device)
    return gateway_bench.run(
        p.concurrencies,
        p.requests,
        repeats=1 if p.device != "cuda" else 2,
        triton=options,
        repository=repository,
    )


def device_name(device: str) -> str:
    import torch

    from benchmarks.common import machine

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU dry run: {machine()}"


def markdown(p: Plan, name: str, speed: dict[str, float], pipe: dict[str, Any], serve: str) -> str:
    from benchmarks import gateway_bench  # noqa: F401 (the serving table is its markdown)

    h, w = p.image_size
    return "\n".join(
        [
            f"Device: {name}. Command: `make bench-gpu` (`python -m benchmarks.gpu`).",
            "",
            f"Training, {p.model} at {h}x{w}, batch {p.batch}, channels-last, random images, "
            f"{p.speed_steps} steps after 3 warm-up steps:",
            "",
            "| precision | images/s |",
            "|---|---|",
            f"| bf16 autocast | {speed['bf16']:.0f} |",
            f"| fp32 | {speed['fp32']:.0f} |",
            f"| ratio bf16 / fp32 | {speed['bf16'] / speed['fp32']:.2f}x |",
            "",
            f"The real pipeline: `python -m training fit --config configs/gpu.yaml` for "
            f"{pipe['fit_steps']} steps ({p.precision}, the real data) took {pipe['fit_s']:.0f} s "
            f"({pipe['fit_images_per_s']:.0f} images/s with start-up and validation), then "
            f"`python -m training export` {pipe['export_s']:.0f} s.",
            "",
            f"Serving that version from the {'GPU' if p.device == 'cuda' else 'CPU (dry run)'} "
            "(Triton's Python backend, one instance):",
            "",
            serve,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks import gateway_bench

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--steps", type=int, default=300, help="Lightning steps of the recipe")
    ap.add_argument("--requests", type=int, default=300, help="per level and target")
    ap.add_argument("--out", type=Path, help="default: docs/benchmarks/gpu.md (cuda only)")
    args = ap.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ""
    if not device:
        print(
            "error: no CUDA device here. Run it on a GPU machine, or `python -m benchmarks.gpu "
            "--device cpu` to check every path at toy sizes (figures not recorded).",
            file=sys.stderr,
        )
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    out = args.out or (DOCS_PART if device == "cuda" else DRY_RUN_PART)
    p = plan(device, args.steps, args.requests)
    started = time.perf_counter()
    print(f"== training speed ({p.model}, {device})", flush=True)
    speed = training_speed(p)
    print(speed, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp_name:
        print("== fit + export", flush=True)
        pipe = pipeline(p, Path(tmp_name))
        print({k: v for k, v in pipe.items() if k != "repository"}, flush=True)
        print("== serving", flush=True)
        served = serving(p, pipe["repository"])
    text = markdown(p, device_name(device), speed, pipe, gateway_bench.markdown(served))
    took = time.perf_counter() - started
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{text}\n\n_Ran {stamp} in {took:.0f} s._\n")
    print(text)
    print(f"wrote {out} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.exit(main())
