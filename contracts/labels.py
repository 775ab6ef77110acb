"""The label contract shared by training, export and serving (see docs/architecture.md).

Index = output position of every model. Never reorder: exported models and stored
predictions depend on it.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

# Malignant or pre-malignant: never excluded by a body-location rule unless it says so.
MALIGNANT: frozenset[str] = frozenset({"akiec", "bcc", "mel"})
MELANOMA = "mel"

# HAM10000's `localization` values. `unknown` is also what clients send when they do not know.
BODY_SITES: tuple[str, ...] = (
    "abdomen",
    "acral",
    "back",
    "chest",
    "ear",
    "face",
    "foot",
    "genital",
    "hand",
    "lower extremity",
    "neck",
    "scalp",
    "trunk",
    "upper extremity",
    "unknown",
)
UNKNOWN_SITE = "unknown"

SEXES: tuple[str, ...] = ("male", "female", "unknown")

# How a diagnosis was confirmed (HAM10000's dx_type values).
CONFIRMATIONS: tuple[str, ...] = ("histo", "follow_up", "consensus", "confocal")
