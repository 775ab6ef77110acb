"""The one place that names the Triton model and its tensors.

The exported model takes ``uint8`` RGB images ``[N, H, W, 3]`` and returns ``float32``
probabilities ``[N, 7]`` (:data:`contracts.labels.CLASSES` order), where the version has
the out-of-distribution gate a score ``[N, 1]``, and where it has the explanation a class
activation map ``[N, 7, h, w]``. Tensor names follow the PyTorch backend's ``<name>__<index>``
convention: the backend hands out the model's ``index``-th returned tensor under that name, so
the same ``config.pbtxt`` works with NVIDIA's native backend in production and with the Python
backend of the local CPU server, and a name means the same tensor in every version.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "skin_lesion"
INPUT_NAME = "image__0"
# Fusion versions (``clinical`` in their metadata.json) take a second input: the patient's age,
# sex and body site encoded by ``contracts.clinical``, float32 ``[N, D]`` (``D`` =
# ``contracts.clinical.DIM``), the model's second forward argument. Image-only versions lack it.
CLINICAL_INPUT_NAME = "clinical__1"
CLINICAL_DATATYPE = "FP32"
OUTPUT_NAME = "probabilities__0"
INPUT_DATATYPE = "UINT8"
OUTPUT_DATATYPE = "FP32"
# Versions exported with the out-of-distribution gate (``gate.ood`` in their metadata.json)
# have a second output: one float32 score per image, ``[N, 1]``; higher = further from the
# training photos. Older versions have only the probabilities.
OOD_OUTPUT_NAME = "ood_score__1"
OOD_DATATYPE = "FP32"
# Versions exported with the explanation (``explain`` in their metadata.json) have the class
# activation map of every class: float32 ``[N, 7, h, w]`` on the network's last feature grid
# (``explain.grid``), raw, in logit units before the temperature (its mean over the grid is
# the class's logit; docs/explain.md). It is always the model's THIRD returned tensor: a version
# without the gate returns an empty ``[N, 0]`` placeholder second, which no config lists.
CAM_OUTPUT_NAME = "cam__2"
CAM_DATATYPE = "FP32"


def output_index(name: str) -> int:
    """The position of an output in the model's returned tuple: ``<name>__<index>``'s index.

    Raises:
        ValueError: the name does not end in ``__<digits>``.
    """
    stem, sep, index = name.rpartition("__")
    if not sep or not stem or not index.isdigit():
        raise ValueError(f"tensor name {name!r} does not follow <name>__<index>")
    return int(index)
