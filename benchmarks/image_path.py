"""The image path: decode and resize of a full-size JPEG, several ways, against the model's time.

Every way ends at the served model's input (``eval_resize`` to 112x150) from the real 600x450
photos in REAL_LESIONS_DIR. ``same pixels`` says whether the result is identical to Pillow's
(the training and serving reference); the reduced-scale decodes are faster but not identical,
so the gateway does not use them (their mean difference is shown). The model time is the
production ``efficientnet_lite0`` as the frozen channels-last TorchScript (the fastest CPU
path in the models section), per image at batch 1 and at batch 32.

    python -m benchmarks.image_path
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from benchmarks.common import Stats, machine, stats
from contracts.images import eval_resize

MODEL = "efficientnet_lite0"
KNN = "probabilities + kNN score (the default, bank of 2000)"
GATE_BEFORE = "gateway before the quality gate (decode + resize + brightness/contrast)"
GATE_AFTER = "gateway with the quality gate (serving.gate.screen: + sharpness + 6 checks)"


def _pillow(data: bytes) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(img.convert("RGB"))


def _gateway_before(data: bytes) -> np.ndarray:
    """What the gateway did before: Pillow's decode plus a second, strict simplejpeg pass."""
    from contracts.images import _check_jpeg_data

    img = Image.open(io.BytesIO(data))
    img.load()
    _check_jpeg_data(data)
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB")).copy()


def _opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def _simplejpeg(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)


def ways(size: tuple[int, int]) -> dict[str, Callable]:
    """Name -> ``bytes -> uint8 [*size, 3]``."""
    from contracts.images import prepare_image
    from serving.settings import Settings

    max_pixels = Settings.model_fields["max_pixels"].default

    h, w = size

    def pil_draft(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (w, h))  # libjpeg's DCT scaling to the smallest size >= (w, h)
        return np.asarray(img.convert("RGB"))

    def simplejpeg_scaled(data: bytes) -> np.ndarray:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=h, min_width=w)

    from contracts.images import decode_image, luminance_stats
    from contracts.quality import QualityThresholds
    from serving.gate import screen

    # Thresholds every real photo passes, so the whole path runs (a refusal would stop early).
    passing = QualityThresholds(1, 100.0, 0.0, 0.0, 255.0, 0.0)

    def before_gate(data: bytes) -> np.ndarray:
        """The gateway's path before the gate: decode, resize, brightness and contrast."""
        model_input = eval_resize(decode_image(data, max_pixels).rgb, size)
        luminance_stats(model_input)
        return model_input

    def gated(data: bytes) -> np.ndarray:
        screened = screen(data, size, max_pixels, None, passing)
        assert screened.prepared is not None and screened.refusal is None
        return screened.prepared.model_input

    return {
        "Pillow": lambda d: eval_resize(_pillow(d), size),
        "OpenCV": lambda d: eval_resize(_opencv(d), size),
        "simplejpeg (libjpeg-turbo, strict)": lambda d: eval_resize(_simplejpeg(d), size),
        "Pillow + strict check (gateway before)": lambda d: eval_resize(_gateway_before(d), size),
        "gateway prepare_image now (simplejpeg + checks + stats)": lambda d: (
            prepare_image(d, size, max_pixels).model_input
        ),
        GATE_BEFORE: before_gate,
        GATE_AFTER: gated,
        "Pillow draft, DCT-scaled": lambda d: eval_resize(pil_draft(d), size),
        "simplejpeg, DCT-scaled": lambda d: eval_resize(simplejpeg_scaled(d), size),
    }


def _per_image_ms(fn: Callable[[bytes], np.ndarray], photos: list[bytes], repeats: int) -> Stats:
    fn(photos[0])
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for d in photos:
            fn(d)
        samples.append((time.perf_counter() - start) * 1000 / len(photos))
    return stats(samples)


def _gated_models(size: tuple[int, int]) -> dict[str, Any]:
    """The exported model without and with the out-of-distribution score, as export writes
    them (TorchScript): the default kNN score with a bank of 2000 (random) training images, and
    Mahalanobis with Gaussians fitted on random features."""
    import torch

    import models
    from training.export.gate import GATE_IMAGES
    from training.export.ood import (
        HISTOGRAM_BINS,
        GatedModel,
        Neighbours,
        fit_gaussians,
        split_classifier,
    )
    from training.export.torchscript import to_torchscript
    from training.export.wrapper import ProbabilityModel

    torch.manual_seed(0)
    classifier = models.create_classifier(MODEL, 7).eval()
    detector = split_classifier(classifier)
    example = torch.randint(0, 256, (64, *size, 3), dtype=torch.uint8)
    with torch.no_grad():
        _, features = detector(example)
    labels = np.arange(len(features)) % 7
    gaussians = fit_gaussians(features.numpy().astype(np.float64), labels)
    plain = ProbabilityModel(classifier).eval()
    rng = np.random.default_rng(0)
    bank = Neighbours(
        rng.normal(size=(GATE_IMAGES, features.shape[1])),
        rng.random((GATE_IMAGES, HISTOGRAM_BINS**3)),
    )
    knn = GatedModel(detector, "knn", 1.0, neighbours=bank).eval()
    mahalanobis = GatedModel(detector, "mahalanobis", 1.0, gaussians).eval()
    return {
        "probabilities only": to_torchscript(plain, example[:2])[0],
        KNN: to_torchscript(knn, example[:2])[0],
        "probabilities + Mahalanobis score": to_torchscript(mahalanobis, example[:2])[0],
    }


def _paired_ms(nets: dict[str, Any], size: tuple[int, int], repeats: int) -> dict[str, Stats]:
    """Per-image ms at batch 1, the variants interleaved so load affects them alike."""
    import torch

    x = torch.randint(0, 256, (1, *size, 3), dtype=torch.uint8)
    samples: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for net in nets.values():
            for _ in range(3):
                net(x)
        for _ in range(repeats):
            for name, net in nets.items():
                start = time.perf_counter()
                for _ in range(20):
                    net(x)
                samples[name].append((time.perf_counter() - start) * 1000 / 20)
    return {name: stats(v) for name, v in samples.items()}


def _model_ms(size: tuple[int, int], repeats: int) -> dict[int, Stats]:
    import torch

    from benchmarks.models_bench import SIZE, inference_variants

    assert tuple(size) == SIZE, (size, SIZE)
    net = inference_variants(MODEL)["TorchScript frozen channels-last"]
    out = {}
    for batch in (1, 32):
        x = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            samples = []
            for _ in range(repeats):
                n = max(1, 64 // batch)
                start = time.perf_counter()
                for _ in range(n):
                    net(x)
                samples.append((time.perf_counter() - start) * 1000 / (n * batch))
        out[batch] = stats(samples)
    return out


def run(images_dir: Path | None = None, repeats: int = 5) -> dict:
    import models
    from training.export import default_parity_dir

    folder = Path(images_dir or default_parity_dir())
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    size = models.get_spec(MODEL).input_size
    first = _pillow(photos[0])
    reference = [eval_resize(_pillow(d), size) for d in photos]
    rows = []
    for name, fn in ways(size).items():
        pairs = list(zip([fn(d) for d in photos], reference, strict=True))
        diff = np.mean([np.abs(a.astype(int) - b).mean() for a, b in pairs])
        same = all(np.array_equal(a, b) for a, b in pairs)
        rows.append(
            {"way": name, "ms": _per_image_ms(fn, photos, repeats), "same": same, "diff": diff}
        )
    return {
        "photos": f"{len(photos)} JPEGs {first.shape[1]}x{first.shape[0]} from {folder.name}",
        "size": list(size),
        "rows": rows,
        "model_ms": _model_ms(size, repeats),
        "gate_model_ms": _paired_ms(_gated_models(size), size, 3 * repeats),
        "machine": machine(),
    }


def markdown(res: dict) -> str:
    base = res["rows"][0]["ms"].median
    gateway = next(r["ms"].median for r in res["rows"] if r["way"].startswith("gateway prep"))
    model = res["model_ms"]
    lines = [
        f"{res['photos']}, each decoded and resized to {res['size'][0]}x{res['size'][1]}; "
        f"ms per image, median (min-max) of repeated passes, one thread; {res['machine']}.",
        "",
        "| way | ms / image | speed vs Pillow | same pixels as Pillow | mean abs diff |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['way']} | {r['ms'].fmt(2)} | {base / r['ms'].median:.2f}x | "
            f"{'yes' if r['same'] else 'no'} | {r['diff']:.2f} |"
        )
    lines += [
        "",
        f"The model ({MODEL}, frozen channels-last TorchScript, 2 threads): "
        f"{model[1].fmt(2)} ms per image at batch 1, {model[32].fmt(2)} ms per image at "
        f"batch 32. The gateway's decode is "
        f"{gateway / model[32].median:.2f}x a batched inference of one image, "
        f"{gateway / model[1].median:.2f}x a batch-1 inference.",
    ]
    rows = {r["way"]: r["ms"].median for r in res["rows"]}
    gate = res["gate_model_ms"]
    plain, scored = gate["probabilities only"], gate[KNN]
    maha = gate["probabilities + Mahalanobis score"]
    lines += [
        "",
        "The gate's added latency per upload (issue #16's goal: at most 2 ms at p50): the quality "
        f"checks add {rows[GATE_AFTER] - rows[GATE_BEFORE]:+.2f} ms to the image path "
        f"({rows[GATE_BEFORE]:.2f} -> {rows[GATE_AFTER]:.2f} ms, medians above); the "
        f"out-of-distribution score inside the exported {MODEL} (TorchScript as exported, batch "
        f"1, interleaved runs) takes {plain.fmt(2)} ms without and {scored.fmt(2)} ms with the "
        f"default kNN score ({scored.median - plain.median:+.2f} ms, "
        f"{scored.median / plain.median:.2f}x; Mahalanobis: {maha.fmt(2)} ms).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
