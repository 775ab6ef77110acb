"""Images that are not dermoscopic lesion photos: what the out-of-distribution gate must refuse.

Two groups, built in code from what the installed packages ship (nothing is downloaded):

- ``far`` (:func:`far_from_lesion`): far from any lesion photo. The test images of
  ``skimage.data`` by what they show (``photo``, ``texture``, ``medical``, ``document``,
  ``graphic``: greyscale and binary ones made RGB, RGBA composited on white as the gateway
  does), each with seeded variants (two crops, a flip, a rescale); and synthetic frames:
  ``uniform`` colours (black, white, grey, primaries, skin tones), ``gaussian_noise``,
  ``salt_pepper``, linear and radial ``gradient``, ``text_page`` (rendered with
  ``cv2.putText``) and ``pattern`` (checkerboards, stripes).
- ``degraded`` (:func:`degraded`): real lesion photos made unusable: ``gaussian_blur``
  (sigma :data:`BLUR_SIGMA_FRACTION` of the shorter side), ``overexposed_8x`` and
  ``underexposed_8x`` (x8 and /8 in linear light, 3 stops, sRGB-encoded again),
  ``crop_24x24`` and ``crop_64x48`` (near the centre, where the lesion is), ``strip_2000x40``
  (the whole photo squashed to 2000x40) and ``jpeg_q5`` (JPEG quality 5; the file's own
  bytes travel in :attr:`CorpusImage.data`).

Everything is deterministic: the same seed (and lesion photos) gives the same pixels.

    python -m training.ood_corpus OUT_DIR [--lesions DIR] [--n-lesions 20] [--seed 0]

writes ``OUT_DIR/<group>/<kind>/<name>.png`` (``.jpg`` for ``jpeg_q5``) and ``manifest.csv``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from contracts.errors import ConfigError, DataError
from contracts.images import index_images, read_image

FAR, DEGRADED = "far", "degraded"
# skimage.data's images that ship with scikit-image (no download), by what they show.
NATURAL_KINDS: dict[str, str] = {
    "astronaut": "photo",
    "camera": "photo",
    "cat": "photo",
    "chelsea": "photo",
    "clock": "photo",
    "coffee": "photo",
    "coins": "photo",
    "moon": "photo",
    "rocket": "photo",
    "hubble_deep_field": "photo",
    "brick": "texture",
    "grass": "texture",
    "gravel": "texture",
    "immunohistochemistry": "medical",
    "retina": "medical",
    "microaneurysms": "medical",
    "cell": "medical",
    "shepp_logan_phantom": "medical",
    "page": "document",
    "text": "document",
    "colorwheel": "graphic",
    "logo": "graphic",
    "checkerboard": "graphic",
    "horse": "graphic",
    "binary_blobs": "graphic",
}
SYNTHETIC_KINDS = (
    "uniform",
    "gaussian_noise",
    "salt_pepper",
    "gradient",
    "text_page",
    "pattern",
)
FAR_KINDS: tuple[str, ...] = (*dict.fromkeys(NATURAL_KINDS.values()), *SYNTHETIC_KINDS)
DEGRADED_KINDS: tuple[str, ...] = (
    "gaussian_blur",
    "overexposed_8x",
    "underexposed_8x",
    "crop_24x24",
    "crop_64x48",
    "strip_2000x40",
    "jpeg_q5",
)
# Heavy blur: Gaussian sigma as a share of the photo's shorter side (7.5 px on a 150-px side,
# 22.5 px on 450), so a photo's blur is the same whatever its resolution.
BLUR_SIGMA_FRACTION = 0.05
EXPOSURE = 8.0  # 3 stops, in linear light
JPEG_QUALITY = 5
STRIP = (2000, 40)  # width, height
CROPS = ((24, 24), (64, 48))  # width, height
# Synthetic frames: the sizes of phone and camera uploads, (height, width).
FRAME_SIZES = ((450, 600), (480, 640), (600, 450), (768, 1024))
MIN_CROP_SIDE = 160
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 60, 200),
    "skin_light": (241, 194, 167),
    "skin_medium": (198, 134, 96),
    "skin_dark": (120, 75, 50),
    "skin_pink": (225, 160, 150),
}
_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua patient referral report dermatology clinic date page"
)
WORDS = tuple(_TEXT.split())


@dataclass(frozen=True)
class CorpusImage:
    """One image of the corpus.

    Attributes:
        kind: what it is (:data:`FAR_KINDS` or :data:`DEGRADED_KINDS`).
        group: ``"far"`` or ``"degraded"``.
        name: unique within its group and kind; a file name without extension.
        rgb: the pixels, ``uint8 [H, W, 3]``.
        data: the encoded file when the kind is defined by its encoding (``jpeg_q5``): the
            bytes an upload would carry, which decode to ``rgb``; None otherwise.
    """

    kind: str
    group: str
    name: str
    rgb: np.ndarray
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def suffix(self) -> str:
        """The file extension :func:`write_corpus` gives it."""
        return ".jpg" if self.data is not None else ".png"


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any ``skimage.data`` array as RGB ``uint8``: bool and float [0, 1] scaled to 0-255,
    greyscale repeated, RGBA composited on white (as ``contracts.images`` decodes uploads)."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"cannot convert {a.dtype} to uint8")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.rint(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


def _natural(name: str, seed: int) -> np.ndarray:
    """A ``skimage.data`` image as RGB; generated ones (``binary_blobs``) get ``seed``."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError(
            "the out-of-distribution corpus uses scikit-image's test images: "
            "pip install 'scikit-image>=0.24' (in the dev extra)"
        ) from None
    load = getattr(skimage.data, name)
    seeded = "rng" in inspect.signature(load).parameters
    return to_rgb(load(rng=seed) if seeded else load())


def _crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 40-90 % of each side, at least :data:`MIN_CROP_SIDE` when possible."""
    h, w = rgb.shape[:2]
    ch = int(min(h, max(MIN_CROP_SIDE, h * rng.uniform(0.4, 0.9))))
    cw = int(min(w, max(MIN_CROP_SIDE, w * rng.uniform(0.4, 0.9))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(rgb[y : y + ch, x : x + cw])


def _rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interpolation)


def _variants(rgb: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    factor = float(rng.uniform(0.6, 1.6))
    return {
        "crop1": _crop(rgb, rng),
        "crop2": _crop(rgb, rng),
        "flip": np.ascontiguousarray(rgb[:, ::-1] if rng.random() < 0.5 else rgb[::-1]),
        f"rescale{factor:.2f}": _rescale(rgb, factor),
    }


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    return FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]


def _uniform(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: np.full((*_frame(rng), 3), c, np.uint8) for name, c in COLOURS.items()}


def _gaussian_noise(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for std in (10, 40, 80):
        for colour in (False, True):
            h, w = _frame(rng)
            noise = rng.normal(128, std, (h, w, 3 if colour else 1))
            img = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
            out[f"{'colour' if colour else 'grey'}_std{std}"] = np.ascontiguousarray(
                np.broadcast_to(img, (h, w, 3))
            )
    return out


def _salt_pepper(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for background, density in (("grey", 0.05), ("grey", 0.5), ("white", 0.2), ("skin", 0.2)):
        h, w = _frame(rng)
        colour = {"grey": 128, "white": 255, "skin": COLOURS["skin_light"]}[background]
        img = np.full((h, w, 3), colour, np.uint8)
        draw = rng.random((h, w))
        img[draw < density / 2] = 0
        img[(draw >= density / 2) & (draw < density)] = 255
        out[f"{background}_density{density}"] = img
    return out


def _gradient(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def blend(t: np.ndarray, a: tuple[int, ...], b: tuple[int, ...]) -> np.ndarray:
        t = np.clip(t, 0, 1)[..., None]
        mixed = np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t
        return np.rint(mixed).astype(np.uint8)

    out = {}
    linear = (
        ("horizontal_grey", lambda y, x: x, (0, 0, 0), (255, 255, 255)),
        ("vertical_grey", lambda y, x: y, (255, 255, 255), (0, 0, 0)),
        ("diagonal_colour", lambda y, x: (x + y) / 2, (30, 60, 200), (240, 200, 40)),
        ("horizontal_skin", lambda y, x: x, COLOURS["skin_light"], COLOURS["skin_dark"]),
    )
    for name, ramp, a, b in linear:
        h, w = _frame(rng)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        out[f"linear_{name}"] = blend(ramp(y / (h - 1), x / (w - 1)), a, b)
    radial = (
        ("bright_centre", (255, 255, 255), (0, 0, 0)),
        ("dark_centre", (0, 0, 0), (255, 255, 255)),
        ("colour", (240, 40, 40), (30, 30, 120)),
        # A dark brown blob on skin: the crudest imitation of a lesion, a hard negative.
        ("brown_on_skin", (90, 50, 30), COLOURS["skin_light"]),
    )
    for name, centre, edge in radial:
        h, w = _frame(rng)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((y - h / 2) / (h / 2), (x - w / 2) / (w / 2)) / np.sqrt(2)
        out[f"radial_{name}"] = blend(r * 1.4, centre, edge)
    return out


def _text_page(rng: np.random.Generator) -> dict[str, np.ndarray]:
    styles = (
        ("black_on_white", (255, 255, 255), (0, 0, 0), 0.8),
        ("small_print", (255, 255, 255), (20, 20, 20), 0.5),
        ("large_print", (250, 250, 240), (0, 0, 0), 1.4),
        ("white_on_black", (0, 0, 0), (255, 255, 255), 0.9),
        ("blue_on_yellow", (250, 240, 180), (20, 40, 160), 0.8),
        ("grey_form", (235, 235, 235), (60, 60, 60), 0.7),
    )
    out = {}
    for name, paper, ink, scale in styles:
        h, w = _frame(rng)
        img = np.full((h, w, 3), paper, np.uint8)
        step = int(34 * scale) + 8
        for top in range(step, h - 8, step):
            words = rng.choice(WORDS, size=int(rng.integers(4, 12)))
            cv2.putText(
                img,
                " ".join(words),
                (12, top),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                ink,
                1,
                cv2.LINE_AA,
            )
        out[name] = img
    return out


def _pattern(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for cell, a, b in ((8, 0, 255), (32, 0, 255), (64, 60, 200)):
        h, w = _frame(rng)
        y, x = np.mgrid[0:h, 0:w]
        board = ((y // cell + x // cell) % 2).astype(bool)
        out[f"checkerboard_{cell}px"] = (
            np.where(board[..., None], a, b).astype(np.uint8).repeat(3, axis=2)
        )
    h, w = _frame(rng)
    y, x = np.mgrid[0:h, 0:w]
    board = ((y // 48 + x // 48) % 2).astype(bool)[..., None]
    out["checkerboard_colour"] = np.where(board, COLOURS["red"], COLOURS["skin_light"]).astype(
        np.uint8
    )
    for name, period, axis in (
        ("stripes_vertical_8px", 8, "x"),
        ("stripes_horizontal_24px", 24, "y"),
        ("stripes_diagonal_16px", 16, "xy"),
        ("stripes_vertical_64px", 64, "x"),
    ):
        h, w = _frame(rng)
        y, x = np.mgrid[0:h, 0:w]
        coord = {"x": x, "y": y, "xy": x + y}[axis]
        on = ((coord // period) % 2).astype(bool)[..., None]
        out[name] = np.where(on, 255, 0).astype(np.uint8).repeat(3, axis=2)
    return out


_SYNTHETIC: dict[str, Callable[[np.random.Generator], dict[str, np.ndarray]]] = {
    "uniform": _uniform,
    "gaussian_noise": _gaussian_noise,
    "salt_pepper": _salt_pepper,
    "gradient": _gradient,
    "text_page": _text_page,
    "pattern": _pattern,
}


def far_from_lesion(seed: int = 0) -> list[CorpusImage]:
    """The ``far`` group: natural images, their variants and synthetic frames (module doc).

    Each source gets its own generator (``[seed, i]``), so one changed source leaves the
    others' pixels as they were.
    """
    images = []
    for i, (name, kind) in enumerate(NATURAL_KINDS.items()):
        rgb = _natural(name, seed)
        images.append(CorpusImage(kind, FAR, name, rgb))
        rng = np.random.default_rng([seed, i])
        for variant, pixels in _variants(rgb, rng).items():
            images.append(CorpusImage(kind, FAR, f"{name}_{variant}", pixels))
    for j, kind in enumerate(SYNTHETIC_KINDS):
        rng = np.random.default_rng([seed, len(NATURAL_KINDS) + j])
        for name, pixels in _SYNTHETIC[kind](rng).items():
            images.append(CorpusImage(kind, FAR, name, np.ascontiguousarray(pixels)))
    return images


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    c = np.clip(linear, 0.0, 1.0)
    s = np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.rint(s * 255.0).astype(np.uint8)


def exposed(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` with ``factor`` times the light (linear light, clipped, sRGB-encoded again)."""
    return _linear_to_srgb(_srgb_to_linear(rgb) * factor)


def blurred(rgb: np.ndarray, fraction: float = BLUR_SIGMA_FRACTION) -> tuple[np.ndarray, float]:
    """Gaussian blur with sigma ``fraction`` of the shorter side; ``(pixels, sigma)``."""
    sigma = fraction * min(rgb.shape[:2])
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma), sigma


def _near_centre_crop(
    rgb: np.ndarray, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h < height or w < width:
        raise DataError(f"cannot crop {width}x{height} from a {w}x{h} photo")
    # Within the central half of the free range: the lesion sits near the middle.
    y = int(rng.integers((h - height) // 4, 3 * (h - height) // 4 + 1))
    x = int(rng.integers((w - width) // 4, 3 * (w - width) // 4 + 1))
    return np.ascontiguousarray(rgb[y : y + height, x : x + width])


def jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> tuple[np.ndarray, bytes]:
    """``rgb`` encoded as a JPEG of ``quality``: ``(decoded pixels, file bytes)``."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("cannot encode a JPEG")
    data = buf.tobytes()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if decoded is None:
        raise DataError("cannot decode the JPEG just encoded")
    return np.asarray(decoded, np.uint8), data


def degrade(rgb: np.ndarray, stem: str, rng: np.random.Generator) -> list[CorpusImage]:
    """Every degraded kind of one lesion photo (module doc)."""
    blur, sigma = blurred(rgb)
    q5, data = jpeg(rgb)
    out = [
        CorpusImage("gaussian_blur", DEGRADED, f"{stem}_sigma{sigma:.1f}", blur),
        CorpusImage("overexposed_8x", DEGRADED, stem, exposed(rgb, EXPOSURE)),
        CorpusImage("underexposed_8x", DEGRADED, stem, exposed(rgb, 1 / EXPOSURE)),
    ]
    for width, height in CROPS:
        crop = _near_centre_crop(rgb, width, height, rng)
        out.append(CorpusImage(f"crop_{width}x{height}", DEGRADED, stem, crop))
    strip = cv2.resize(rgb, STRIP, interpolation=cv2.INTER_AREA)
    out.append(CorpusImage(f"strip_{STRIP[0]}x{STRIP[1]}", DEGRADED, stem, strip))
    out.append(CorpusImage(f"jpeg_q{JPEG_QUALITY}", DEGRADED, stem, q5, data))
    return out


def degraded(paths: Sequence[Path | str], seed: int = 0) -> list[CorpusImage]:
    """The ``degraded`` group: every kind of :data:`DEGRADED_KINDS` of each lesion photo.

    Names are the photos' file stems (the same stem twice is an error: names must be unique).

    Raises:
        DataError: a photo cannot be decoded, or two photos share a stem.
    """
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        twice = sorted(s for s, n in Counter(stems).items() if n > 1)
        raise DataError(f"lesion photos share file names: {', '.join(twice)}")
    images = []
    for i, (path, stem) in enumerate(zip(paths, stems, strict=True)):
        images.extend(degrade(read_image(str(path)), stem, np.random.default_rng([seed, i])))
    return images


def sample_photos(folder: Path | str, n: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``n`` photos under ``folder`` (all when fewer), in name order."""
    paths = sorted(Path(p) for p in index_images(Path(folder)).values())
    if not paths:
        raise DataError(f"no JPEG/PNG photos under {folder}")
    if len(paths) > n:
        keep = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    return paths


def write_image(image: CorpusImage, path: Path) -> Path:
    """``image`` as a file: its own bytes when it has them, else a PNG of its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.data is not None:
        path.write_bytes(image.data)
    elif not cv2.imwrite(str(path), np.ascontiguousarray(image.rgb[..., ::-1])):
        raise DataError(f"cannot write {path}")
    return path


def write_corpus(
    folder: Path | str, lesion_paths: Sequence[Path | str] = (), seed: int = 0
) -> list[Path]:
    """Write the far group and the degraded group of ``lesion_paths`` under ``folder`` as
    ``<group>/<kind>/<name>.png`` (``.jpg`` for the JPEG kind), plus ``manifest.csv``
    (group, kind, name, width, height, file); returns the image files."""
    root = Path(folder)
    written, rows = [], []
    for image in [*far_from_lesion(seed), *degraded(lesion_paths, seed)]:
        path = write_image(image, root / image.group / image.kind / f"{image.name}{image.suffix}")
        written.append(path)
        h, w = image.rgb.shape[:2]
        rows.append([image.group, image.kind, image.name, w, h, str(path.relative_to(root))])
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "kind", "name", "width", "height", "file"])
        writer.writerows(rows)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.ood_corpus OUT_DIR [--lesions DIR]``."""
    p = argparse.ArgumentParser(
        prog="python -m training.ood_corpus",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out_dir", help="folder to write the corpus to")
    p.add_argument("--lesions", help="folder of lesion photos to degrade (default: none)")
    p.add_argument("--n-lesions", type=int, default=20, help="photos sampled from --lesions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        lesions = sample_photos(args.lesions, args.n_lesions, args.seed) if args.lesions else []
        written = write_corpus(args.out_dir, lesions, args.seed)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = Counter(Path(w).relative_to(args.out_dir).parts[:2] for w in written)
    for (group, kind), n in sorted(counts.items()):
        print(f"{group:9s} {kind:16s} {n:4d}")
    print(f"{len(written)} images under {args.out_dir}")
    if not lesions:
        print("no --lesions folder: the degraded group is empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
