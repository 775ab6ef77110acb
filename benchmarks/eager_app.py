"""The alternative most tutorials build: one FastAPI process that runs the eager PyTorch model
in the request handler, one photo per request. The baseline of the gateway benchmark.

Given its best honest shot: a sync handler (FastAPI runs it in its thread pool, so the event
loop keeps accepting), ``torch.inference_mode``, the model in ``eval`` mode, torch's default
intra-op threads, the same decode and ``eval_resize`` as the gateway. No database, no rules:
it only answers. Started by ``benchmarks.gateway_bench`` as

    EAGER_MODEL=efficientnet_lite0 python -m uvicorn benchmarks.eager_app:app --port N
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, ImageOps, UnidentifiedImageError

import models
from contracts.images import eval_resize
from contracts.labels import CLASSES

MODEL = os.environ.get("EAGER_MODEL", "efficientnet_lite0")
# EAGER_SIZE="150x200" (height x width): the served version's size when it is not the model's own.
_SIZE = os.environ.get("EAGER_SIZE")
SIZE = tuple(int(v) for v in _SIZE.split("x")) if _SIZE else models.get_spec(MODEL).input_size
NET = models.create_classifier(MODEL).eval()

app = FastAPI(title="eager baseline")


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(image: UploadFile = File(...)) -> dict:
    try:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(image.file.read())))
        rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise HTTPException(422, f"cannot read the image: {e}") from e
    x = torch.from_numpy(eval_resize(rgb, SIZE)[None])
    with torch.inference_mode():
        probs = torch.softmax(NET(x), dim=1)[0].tolist()
    top = int(np.argmax(probs))
    return {
        "top_class": CLASSES[top],
        "probabilities": dict(zip(CLASSES, probs, strict=True)),
    }
