"""Per-model speed on this CPU: training steps and inference variants, against the ceiling.

- Training: images/s of a full step (forward, class-weighted loss, backward, AdamW) at
  batch 32, beside the data pipeline's own rate (decode + augment, no model).
- Fine-tuning with frozen input stages (``model.frozen_stages``): images/s of a channels-last
  training step of EfficientNet-Lite0 with 0, 2 and 4 stages frozen, against 0 in the same run.
- Inference: eager, channels-last, TorchScript and frozen TorchScript (``optimize_for_inference``)
  at batch 1 and 32; achieved FLOP/s as a fraction of a large float32 matmul's FLOP/s, the
  machine's physical ceiling for this kind of work.
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models
from benchmarks.common import Stats, repeat
from models.registry import freeze_input_stages
from models.wrappers import ImageClassifier

warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=FutureWarning)

SIZE = (112, 150)
FROZEN = (0, 2, 4)  # stages frozen from the input (the stem counts as one)


def matmul_flops(n: int = 2048, repeats: int = 5) -> Stats:
    """Float32 matmul FLOP/s (GFLOP/s), the ceiling a CNN on this CPU can approach."""
    a, b = torch.randn(n, n), torch.randn(n, n)

    def once() -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        return 2 * n**3 / (time.perf_counter() - start) / 1e9

    return repeat(once, repeats=repeats, warmup=2)


def build(name: str) -> ImageClassifier:
    spec = models.get_spec(name)
    return ImageClassifier(models.create(name, num_classes=7), spec.mean, spec.std)


def forward_flops(model: nn.Module, size: tuple[int, int] = SIZE) -> int:
    """FLOPs of one image's forward pass (multiply-add = 2)."""
    x = torch.randint(0, 256, (1, *size, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def train_rate(
    name: str, batch: int = 32, steps: int = 3, frozen_stages: int = 0, channels_last: bool = False
) -> Stats:
    """Images/s of full training steps on random uint8 images (the first ``frozen_stages``
    stages frozen as ``LesionClassifier`` freezes them)."""
    model = build(name).train()
    for module in freeze_input_stages(model.net, frozen_stages):
        module.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(weight=torch.ones(7))
    x = torch.randint(0, 256, (batch, *SIZE, 3), dtype=torch.uint8)
    y = torch.randint(0, 7, (batch,))

    def once() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return batch * steps / (time.perf_counter() - start)

    return repeat(once, repeats=3, warmup=1)


def inference_variants(name: str) -> dict[str, nn.Module]:
    """The ways this project can run a model on CPU, all with the same weights."""
    eager = build(name).eval()
    example = torch.randint(0, 256, (1, *SIZE, 3), dtype=torch.uint8)
    variants: dict[str, nn.Module] = {"eager": eager}
    cl = build(name).eval()
    cl.load_state_dict(eager.state_dict())
    cl.net.to(memory_format=torch.channels_last)
    variants["eager channels-last"] = cl
    with torch.no_grad():
        scripted = torch.jit.trace(eager, example)
        variants["TorchScript"] = scripted
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(cl, example)))
        variants["TorchScript frozen channels-last"] = frozen
    return variants


def inference_rate(model: nn.Module, batch: int, seconds: float = 1.5) -> Stats:
    x = torch.randint(0, 256, (batch, *SIZE, 3), dtype=torch.uint8)

    def once() -> float:
        n, start = 0, time.perf_counter()
        with torch.no_grad():
            while time.perf_counter() - start < seconds / 3:
                model(x)
                n += batch
        return n / (time.perf_counter() - start)

    return repeat(once, repeats=3, warmup=1)


def run(names: tuple[str, ...] = ("compact_cnn", "efficientnet_lite0", "resnet18")) -> dict:
    """All figures, as a dict the report renderer turns into tables."""
    ceiling = matmul_flops()
    out: dict = {"matmul_gflops": ceiling, "models": {}}
    for name in names:
        model = build(name)
        flops = forward_flops(model)
        entry = {"gflops_per_image": flops / 1e9, "train": train_rate(name), "inference": {}}
        for variant, m in inference_variants(name).items():
            entry["inference"][variant] = {b: inference_rate(m, b) for b in (1, 32)}
        out["models"][name] = entry
    out["frozen"] = {
        k: train_rate("efficientnet_lite0", frozen_stages=k, channels_last=True) for k in FROZEN
    }
    return out


def markdown(res: dict, data_rate: Stats | None = None) -> str:
    ceil = res["matmul_gflops"]
    lines = [
        f"Float32 matmul ceiling (2048x2048, torch.mm): {ceil.fmt()} GFLOP/s.",
        "",
        "| model | GFLOP/img | train img/s (batch 32) | data pipeline img/s | pipeline/train |",
        "|---|---|---|---|---|",
    ]
    for name, e in res["models"].items():
        ratio = f"{data_rate.median / e['train'].median:.1f}x" if data_rate else "n/a"
        dr = data_rate.fmt() if data_rate else "n/a"
        lines.append(
            f"| {name} | {e['gflops_per_image']:.3f} | {e['train'].fmt()} | {dr} | {ratio} |"
        )
    if "frozen" in res:
        base = res["frozen"][0].median
        lines += [
            "",
            f"EfficientNet-Lite0 fine-tuning at {SIZE[0]}x{SIZE[1]}, channels-last, batch 32, "
            "with the first stages frozen (`model.frozen_stages`; the stem counts as one):",
            "",
            "| frozen stages | train img/s | vs none frozen |",
            "|---|---|---|",
        ]
        for k, rate in res["frozen"].items():
            lines.append(f"| {k} | {rate.fmt()} | {rate.median / base:.2f}x |")
    lines += [
        "",
        "| model | variant | img/s batch 1 | img/s batch 32 | vs eager (b32) "
        "| % of matmul FLOP/s (b32) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in res["models"].items():
        base = e["inference"]["eager"][32].median
        for variant, r in e["inference"].items():
            pct = 100 * r[32].median * e["gflops_per_image"] / ceil.median
            lines.append(
                f"| {name} | {variant} | {r[1].fmt()} | {r[32].fmt()} | "
                f"{r[32].median / base:.2f}x | {pct:.0f}% |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
