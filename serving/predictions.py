"""Creating a prediction: idempotency, classification, the answer, its record and metrics.

``POST /v1/predictions`` (:mod:`serving.api.routes.predictions`) parses the request into an
:class:`Upload` and calls :func:`create_prediction`. The answer is returned only after its
record is committed; a retry with the same request id gets the stored answer and creates no
second record.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread
import numpy as np
from sqlalchemy.exc import IntegrityError

from contracts.images import ImageRejected, PreparedImage, prepare_image
from contracts.labels import CLASS_NAMES, CLASSES, MALIGNANT
from contracts.rules import Rules, apply_rules
from serving.api.deps import AppState
from serving.api.schemas import PredictionCreate, PredictionPublic
from serving.db import crud
from serving.db.tables import Prediction, utcnow
from serving.inference import predict_with_retries
from serving.metrics import Metrics
from serving.model_info import ServedModel
from serving.referral import decide, no_advice
from serving.storage import store_image
from serving.triton.client import TritonModelNotReady


class RequestIdReused(ValueError):
    """A request id already names a different upload of the same client."""


@dataclass(frozen=True)
class Upload:
    """One parsed ``POST /v1/predictions``.

    Args:
        form: the form fields.
        data: the image's bytes.
        request_id: the client's id for idempotent retries, if it sent one.
        client: the caller's client id (from its API key).
        started: ``time.perf_counter()`` when the request arrived, for ``timings.total_ms``.
    """

    form: PredictionCreate
    data: bytes
    request_id: str | None
    client: str
    started: float


@dataclass(frozen=True)
class Classified:
    """The model's view of one upload, and how long it took."""

    model: ServedModel
    prepared: PreparedImage
    probs: np.ndarray  # [7], CLASSES order
    decode_s: float
    inference_s: float


@dataclass(frozen=True)
class Created:
    """What :func:`create_prediction` answers: a new record's answer, or a stored one."""

    answer: dict[str, Any]
    replayed: bool


def fingerprint(form: PredictionCreate, image_sha256: str) -> str:
    """What makes two uploads the same request, for idempotency checks."""
    fields = form.model_dump(include={"body_location", "age", "sex", "consent_to_store_image"})
    return hashlib.sha256(json.dumps([image_sha256, fields], sort_keys=True).encode()).hexdigest()


def check_size(data: bytes, limit: int) -> None:
    """Raises ImageRejected (413) when the upload is larger than ``limit`` bytes."""
    if len(data) > limit:
        raise ImageRejected(
            f"the image is {len(data)} bytes; the limit is {limit}: send a smaller file",
            status_code=413,
        )


def replay(stored: tuple[str, dict[str, Any]], fp: str) -> Created:
    """The stored answer of a retried request.

    Raises:
        RequestIdReused: the stored request was a different upload.
    """
    stored_fp, answer = stored
    if stored_fp != fp:
        raise RequestIdReused(
            "this request id was already used for a different upload: use a new request id "
            "for a new request (the same id only for retrying the same one)"
        )
    return Created(answer, replayed=True)


async def _prepare(
    state: AppState, data: bytes, size: tuple[int, int], digest: str
) -> PreparedImage:
    return await anyio.to_thread.run_sync(
        prepare_image,
        data,
        size,
        state.settings.max_pixels,
        digest,
        limiter=state.decode_limiter,
    )


async def _predict(state: AppState, prepared: PreparedImage, model: ServedModel) -> np.ndarray:
    return await predict_with_retries(
        state.triton,
        prepared.model_input[None],
        int(model.version),
        state.settings.triton_timeout_s,
        state.settings.triton_retries,
    )


async def classify(state: AppState, data: bytes, digest: str) -> Classified:
    """Decode for the served version and predict, following a version change once.

    Raises:
        ImageRejected: the image cannot be used.
        TritonError: Triton failed (TritonModelNotReady again if the version did not change).
    """
    model = await state.catalog.served()
    t0 = time.perf_counter()
    prepared = await _prepare(state, data, model.input_size, digest)
    t1 = time.perf_counter()
    try:
        probs = await _predict(state, prepared, model)
    except TritonModelNotReady:
        # A promotion or rollback unloaded the version resolved for this request: resolve the
        # served one again and predict once more (its input size may differ).
        state.catalog.forget()
        fresh = await state.catalog.served()
        if fresh.version == model.version:
            raise
        if fresh.input_size != model.input_size:
            prepared = await _prepare(state, data, fresh.input_size, digest)
        model = fresh
        probs = await _predict(state, prepared, model)
    t2 = time.perf_counter()
    return Classified(model, prepared, probs[0], t1 - t0, t2 - t1)


def build_answer(
    rules: Rules, upload: Upload, result: Classified, created_at: datetime
) -> dict[str, Any]:
    """The public answer (``PredictionPublic`` as JSON); ``timings.total_ms`` is set later."""
    form, model, prepared = upload.form, result.model, result.prepared
    ruled = apply_rules(result.probs, form.body_location, rules)
    after = dict(ruled.ranking)
    referral = (
        no_advice(result.probs, after, model.no_advice)
        if model.no_advice is not None
        else decide(result.probs, after, model.thresholds)
    )
    d = prepared.decoded
    answer = {
        "id": str(uuid.uuid4()),
        "created_at": created_at,
        "request_id": upload.request_id,
        "body_location": form.body_location,
        "age": form.age,
        "sex": form.sex,
        "model": {"name": model.name, "version": model.version},
        "top_class": ruled.ranking[0][0],
        "ranking": [
            {
                "code": c,
                "name": CLASS_NAMES[c],
                "probability": round(p, 6),
                "malignant": c in MALIGNANT,
            }
            for c, p in ruled.ranking
        ],
        "excluded": [
            {
                "code": e.cls,
                "name": CLASS_NAMES[e.cls],
                "original_probability": round(e.original_prob, 6),
                "malignant": e.cls in MALIGNANT,
                "rule_id": e.rule_id,
                "reason": e.reason,
            }
            for e in ruled.excluded
        ],
        "referral": {
            "refer": referral.refer,
            "scores": referral.scores,
            "thresholds": referral.thresholds,
            "threshold_source": model.threshold_source,
            "reason": referral.reason,
        },
        "image": {
            "sha256": d.sha256,
            "format": d.format,
            "width": d.width,
            "height": d.height,
            "brightness": prepared.brightness,
            "contrast": prepared.contrast,
            "stored": form.consent_to_store_image,
        },
        "timings": {
            "decode_ms": round(result.decode_s * 1000, 2),
            "inference_ms": round(result.inference_s * 1000, 2),
            "total_ms": 0.0,
        },
    }
    return PredictionPublic.model_validate(answer).model_dump(mode="json")


def prediction_row(
    upload: Upload, fp: str, result: Classified, answer: dict[str, Any], created_at: datetime
) -> Prediction:
    """The database record of a new answer."""
    form, decoded = upload.form, result.prepared.decoded
    return Prediction(
        id=answer["id"],
        created_at=created_at,
        client_id=upload.client,
        request_id=upload.request_id,
        request_fingerprint=fp,
        model_name=result.model.name,
        model_version=result.model.version,
        body_location=form.body_location,
        age=form.age,
        sex=form.sex,
        image_sha256=decoded.sha256,
        image_format=decoded.format,
        image_width=decoded.width,
        image_height=decoded.height,
        image_brightness=result.prepared.brightness,
        image_contrast=result.prepared.contrast,
        image_stored=form.consent_to_store_image,
        probabilities={c: float(p) for c, p in zip(CLASSES, result.probs, strict=True)},
        top_class=answer["top_class"],
        refer=answer["referral"]["refer"],
        answer=answer,
    )


def observe(metrics: Metrics, result: Classified, answer: dict[str, Any]) -> None:
    """Count a committed prediction in the Prometheus metrics."""
    metrics.stage.labels("decode").observe(result.decode_s)
    metrics.stage.labels("inference").observe(result.inference_s)
    metrics.predictions.labels(answer["top_class"], result.model.version).inc()
    refer = answer["referral"]["refer"]
    metrics.referrals.labels("none" if refer is None else str(refer).lower()).inc()
    for e in answer["excluded"]:
        metrics.exclusions.labels(e["rule_id"], e["code"]).inc()


async def create_prediction(state: AppState, upload: Upload) -> Created:
    """Classify an upload, store the record (and the image, with consent), return the answer.

    Raises:
        ImageRejected: too large, not a JPEG/PNG, or unreadable.
        RequestIdReused: the request id names a different upload.
        TritonError, DatabaseUnavailable: a dependency failed (503 upstream).
    """
    settings = state.settings
    check_size(upload.data, settings.max_upload_bytes)
    digest = hashlib.sha256(upload.data).hexdigest()
    fp = fingerprint(upload.form, digest)
    if upload.request_id is not None:
        stored = await state.db.run(crud.find_request, upload.client, upload.request_id)
        if stored is not None:
            return replay(stored, fp)

    result = await classify(state, upload.data, digest)
    created_at = utcnow()
    answer = build_answer(state.rules, upload, result, created_at)
    if upload.form.consent_to_store_image:
        d = result.prepared.decoded
        await anyio.to_thread.run_sync(
            store_image, upload.data, d.sha256, d.format, settings.image_dir
        )
    answer["timings"]["total_ms"] = round((time.perf_counter() - upload.started) * 1000, 2)
    try:
        await state.db.run(
            crud.add_prediction, prediction_row(upload, fp, result, answer, created_at)
        )
    except IntegrityError:
        # A concurrent retry with the same request id committed first: answer as it did.
        stored = await state.db.run(crud.find_request, upload.client, upload.request_id or "")
        if stored is None:
            raise
        return replay(stored, fp)
    observe(state.metrics, result, answer)
    return Created(answer, replayed=False)
