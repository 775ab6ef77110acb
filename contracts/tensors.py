"""The one place that names the Triton model and its tensors.

The exported model takes ``uint8`` RGB images ``[N, H, W, 3]`` and returns ``float32``
probabilities ``[N, 7]`` (:data:`contracts.labels.CLASSES` order). Tensor names follow the
PyTorch backend's ``<name>__<index>`` convention, so the same ``config.pbtxt`` works with
NVIDIA's native backend in production and with the Python backend of the local CPU server.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "skin_lesion"
INPUT_NAME = "image__0"
OUTPUT_NAME = "probabilities__0"
INPUT_DATATYPE = "UINT8"
OUTPUT_DATATYPE = "FP32"
