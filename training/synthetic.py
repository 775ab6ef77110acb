"""A small synthetic data set in HAM10000's layout, for when no real data is configured.

The metadata follows HAM10000's own frequencies (the constants below were computed once from
the official ``HAM10000_metadata.csv``, 10,015 images of 7,470 lesions; nothing is read at run
time). The images are 200x150 JPEGs of a skin-toned background with one blob whose colour,
size, outline and texture depend on the class, so a model can learn something from them.
A model trained on them is labelled synthetic (``LesionDataModule.synthetic``); its figures
say nothing about real lesions. Same arguments, same files, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from contracts.labels import CLASSES
from training.data import CACHE_DIR, METADATA_FILE

# Images per class in HAM10000.
CLASS_COUNTS = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}

# Images per body site (rows) and per confirmation (dx_type) by class in HAM10000.
_TABLE = """
                 akiec   bcc   bkl    df   mel    nv  vasc
abdomen              5    18    42     4    66   860    27
acral                0     0     0     0     0     7     0
back                29   186   202     2   324  1427    22
chest               12    47    74     0    68   200     6
ear                  3     0     6     0    17    30     0
face               113   101   319     0   104   100     8
foot                 0     4     1     2    28   284     0
genital              0     0     2     1     0    45     0
hand                13     2    14     0     1    55     5
lower extremity     65    58   174    82   192  1479    27
neck                10    14    31     0    29    81     3
scalp               14    19    34     0    14    45     2
trunk                1    11    73     0    47  1241    31
unknown              0     5    23     0    10   196     0
upper extremity     62    49   104    24   213   655    11
confocal             0     0    69     0     0     0     0
consensus            0     0   264    60     0   503    75
follow_up            0     0     0     0     0  3704     0
histo              327   514   766    55  1113  2498    67
"""


def _by_class(rows: list[str]) -> dict[str, dict[str, int]]:
    cells = [r.rsplit(maxsplit=7) for r in rows]  # the name, then one count per class
    return {c: {r[0]: int(r[i + 1]) for r in cells if int(r[i + 1])} for i, c in enumerate(CLASSES)}


_ROWS = _TABLE.strip().splitlines()[1:]
SITE_COUNTS, DX_TYPE_COUNTS = _by_class(_ROWS[:15]), _by_class(_ROWS[15:])

# Age (years) mean and standard deviation per class; HAM10000 rounds ages to 5 years.
AGE = {"akiec": (66.5, 11.5), "bcc": (66.8, 13.7), "bkl": (64.3, 14.1), "df": (53.0, 13.6),
       "mel": (60.7, 15.2), "nv": (46.5, 15.2), "vasc": (51.4, 21.6)}  # fmt: skip
SEX_COUNTS = {"male": 5406, "female": 4552, "unknown": 57}
# Lesions by number of images: 5,514 lesions have 1 image, 1,423 have 2, ...
IMAGES_PER_LESION = {1: 5514, 2: 1423, 3: 490, 4: 34, 5: 5, 6: 4}

# Look of each class: blob RGB colour, radius range (px), outline irregularity, texture.
LOOKS = {
    "akiec": ((200, 90, 90), (28, 40), 0.25, "scale"),
    "bcc": ((245, 120, 150), (22, 34), 0.15, "vessels"),
    "bkl": ((165, 120, 70), (26, 40), 0.2, "spots"),
    "df": ((150, 95, 70), (12, 18), 0.05, "ring"),
    "mel": ((55, 35, 30), (30, 46), 0.45, "veil"),
    "nv": ((120, 75, 45), (18, 28), 0.05, "none"),
    "vasc": ((150, 30, 70), (14, 24), 0.1, "lobes"),
}
WIDTH, HEIGHT = 200, 150
DEFAULT_IMAGES = 700
GENERATOR = 1  # bump when the drawing or metadata changes: names a fresh cache folder


def class_sizes(n_images: int, min_per_class: int = 16) -> dict[str, int]:
    """Images per class: HAM10000's proportions of ``n_images``, at least ``min_per_class``."""
    total = sum(CLASS_COUNTS.values())
    return {c: max(min_per_class, round(n_images * CLASS_COUNTS[c] / total)) for c in CLASSES}


def _pick(rng: np.random.Generator, counts: dict) -> object:
    keys = list(counts)
    p = np.array([counts[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def draw(cls: str, lesion_rng: np.random.Generator, image_rng: np.random.Generator) -> np.ndarray:
    """One RGB image of class ``cls``: the lesion's shape from ``lesion_rng``, the view (shift,
    light, noise) from ``image_rng``, so images of one lesion look alike as in HAM10000."""
    colour, (r_lo, r_hi), irregular, texture = LOOKS[cls]
    skin = np.array([225, 180, 155]) + lesion_rng.integers(-25, 15, 3)
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    image[:] = skin
    radius = lesion_rng.uniform(r_lo, r_hi)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = radius * (1 + irregular * lesion_rng.uniform(-1, 1, angles.size))
    angles = angles + image_rng.uniform(0, 2 * np.pi)  # the camera turns between photos
    centre = np.array([WIDTH / 2, HEIGHT / 2]) + image_rng.uniform(-12, 12, 2)
    points = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.fillPoly(mask, [points.astype(np.int32)], 255)
    tone = np.array(colour) + lesion_rng.integers(-15, 16, 3)
    layer = np.zeros_like(image)
    layer[:] = tone
    c = tuple(int(v) for v in centre)
    if texture == "spots" or texture == "scale":
        dot = (235, 225, 215) if texture == "scale" else (90, 60, 35)
        for xy in points.mean(0) + lesion_rng.normal(0, radius / 2, (25, 2)):
            cv2.circle(layer, tuple(int(v) for v in xy), 2, dot, -1)
    elif texture == "vessels":
        for _ in range(5):
            a, b = centre + lesion_rng.normal(0, radius / 2, (2, 2))
            cv2.line(layer, tuple(int(v) for v in a), tuple(int(v) for v in b), (190, 40, 50), 1)
    elif texture == "ring":
        cv2.circle(layer, c, int(radius * 0.5), (235, 215, 200), -1)
    elif texture == "veil":
        cv2.circle(layer, c, int(radius * 0.6), (90, 100, 130), -1)  # blue-white veil
    elif texture == "lobes":
        for xy in centre + lesion_rng.normal(0, radius / 3, (4, 2)):
            cv2.circle(layer, tuple(int(v) for v in xy), int(radius / 3), (110, 20, 60), -1)
    alpha = cv2.GaussianBlur(mask, (0, 0), 2.0 + 4 * (1 - irregular))[..., None] / 255.0
    image = image * (1 - alpha) + layer * alpha
    image = image * image_rng.uniform(0.85, 1.1) + image_rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def metadata(n_images: int = DEFAULT_IMAGES, seed: int = 0) -> pd.DataFrame:
    """The metadata table (HAM10000's columns plus ``date``) of the synthetic set."""
    rng = np.random.default_rng([seed, 1])
    rows, lesion = [], 0
    for cls, size in class_sizes(n_images).items():
        made = 0
        while made < size:
            lesion += 1
            shots = min(int(_pick(rng, IMAGES_PER_LESION)), size - made)
            site, sex = _pick(rng, SITE_COUNTS[cls]), _pick(rng, SEX_COUNTS)
            age = float(np.clip(5 * round(rng.normal(*AGE[cls]) / 5), 0, 85))
            day = pd.Timestamp("2016-01-01") + pd.Timedelta(days=int(rng.integers(0, 4 * 365)))
            for _ in range(shots):
                made += 1
                rows.append({
                    "lesion_id": f"SYN_{lesion:07d}", "image_id": f"SYN_{len(rows):07d}",
                    "dx": cls, "dx_type": _pick(rng, DX_TYPE_COUNTS[cls]), "age": age,
                    "sex": sex, "localization": site, "date": day.date().isoformat(),
                })  # fmt: skip
    return pd.DataFrame(rows)


# Written into every synthetic set: a folder that holds it is synthetic wherever it is read from
# (a split rebuilt from a recorded path must not pass for real data).
MARKER_FILE = "SYNTHETIC"


def is_synthetic(folder: str | Path) -> bool:
    """Whether ``folder`` holds a set :func:`make_synthetic` wrote."""
    return (Path(folder) / MARKER_FILE).is_file()


def make_synthetic(
    root: str | Path | None = None, n_images: int = DEFAULT_IMAGES, seed: int = 0
) -> Path:
    """Write the synthetic set to ``root`` (default ``.cache/synthetic/v<GENERATOR>-n<N>-s<seed>``).

    Returns the folder: ``HAM10000_metadata.csv`` and ``images/<image_id>.jpg``. A complete
    folder is reused; a new one is built aside and renamed into place, so concurrent callers
    (one per DDP rank) never see half a set.
    """
    root = Path(root or CACHE_DIR / "synthetic" / f"v{GENERATOR}-n{n_images}-s{seed}")
    if (root / METADATA_FILE).is_file():
        if not is_synthetic(root):  # a set written before the marker existed
            (root / MARKER_FILE).write_text("written by training.synthetic.make_synthetic\n")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root.parent))
    meta = metadata(n_images, seed)
    (tmp / "images").mkdir()
    for i, row in enumerate(meta.itertuples()):
        lesion_no = int(row.lesion_id.split("_")[1])
        image = draw(
            row.dx, np.random.default_rng([seed, 2, lesion_no]), np.random.default_rng([seed, 3, i])
        )
        _ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        (tmp / "images" / f"{row.image_id}.jpg").write_bytes(jpeg.tobytes())
    meta.to_csv(tmp / METADATA_FILE, index=False)
    (tmp / MARKER_FILE).write_text("written by training.synthetic.make_synthetic\n")
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return root
