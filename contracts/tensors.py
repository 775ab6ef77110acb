"""The one place that names the Triton model and its tensors.

The exported model takes ``uint8`` RGB images ``[N, H, W, 3]`` and returns ``float32``
probabilities ``[N, 7]`` (:data:`contracts.labels.CLASSES` order), and where the version has
the out-of-distribution gate a score ``[N, 1]``. Tensor names follow the
PyTorch backend's ``<name>__<index>`` convention, so the same ``config.pbtxt`` works with
NVIDIA's native backend in production and with the Python backend of the local CPU server.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "skin_lesion"
INPUT_NAME = "image__0"
OUTPUT_NAME = "probabilities__0"
INPUT_DATATYPE = "UINT8"
OUTPUT_DATATYPE = "FP32"
# Versions exported with the out-of-distribution gate (``gate.ood`` in their metadata.json)
# have a second output: one float32 score per image, ``[N, 1]``; higher = further from the
# training photos. Older versions have only the probabilities.
OOD_OUTPUT_NAME = "ood_score__1"
OOD_DATATYPE = "FP32"
