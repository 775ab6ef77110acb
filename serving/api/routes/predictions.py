"""``/v1/predictions``: upload a photo, read a prediction, send feedback."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Form, Header, HTTPException, Response, status
from sqlalchemy.exc import IntegrityError

from contracts.images import ImageRejected, PreparedImage, prepare_image
from contracts.labels import CLASS_NAMES, CLASSES, MALIGNANT
from contracts.rules import apply_rules
from serving.api.deps import AppState, ClientDep, StateDep
from serving.api.schemas import (
    FeedbackCreate,
    FeedbackPublic,
    PredictionCreate,
    PredictionPublic,
    PredictionWithFeedback,
)
from serving.db import crud
from serving.db.tables import Prediction, utcnow
from serving.inference import predict_with_retries
from serving.referral import decide
from serving.storage import store_image
from serving.triton.client import TritonModelNotReady

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    409: {"description": "request id reused for a different request"},
    413: {"description": "image too large (bytes or pixels)"},
    415: {"description": "not a JPEG or PNG"},
    422: {"description": "invalid field or unreadable image"},
    503: {"description": "Triton or the database is unavailable; retry after Retry-After"},
}


def fingerprint(form: PredictionCreate, image_sha256: str) -> str:
    """What makes two uploads the same request, for idempotency checks."""
    fields = form.model_dump(include={"body_location", "age", "sex", "consent_to_store_image"})
    return hashlib.sha256(json.dumps([image_sha256, fields], sort_keys=True).encode()).hexdigest()


def _request_id(form: PredictionCreate, header: str | None) -> str | None:
    if header is not None and form.request_id is not None and header != form.request_id:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "the Idempotency-Key header and the request_id field differ: send one of them",
        )
    return header if header is not None else form.request_id


def _replay(stored: tuple[str, dict], fp: str, response: Response) -> dict:
    stored_fp, answer = stored
    if stored_fp != fp:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "this request id was already used for a different upload: use a new request id "
            "for a new request (the same id only for retrying the same one)",
        )
    response.status_code = status.HTTP_200_OK
    response.headers["Idempotent-Replayed"] = "true"
    return answer


def _answer(
    state: AppState,
    form: PredictionCreate,
    request_id: str | None,
    prepared: PreparedImage,
    probs: np.ndarray,
    model: Any,
    timings: dict[str, float],
    created_at: datetime,
) -> dict:
    result = apply_rules(probs, form.body_location, state.rules)
    after = dict(result.ranking)
    referral = decide(probs, after, model.thresholds)
    d = prepared.decoded
    return PredictionPublic(
        id=str(uuid.uuid4()),
        created_at=created_at,
        request_id=request_id,
        body_location=form.body_location,
        age=form.age,
        sex=form.sex,
        model={"name": model.name, "version": model.version},
        top_class=result.ranking[0][0],
        ranking=[
            {
                "code": c,
                "name": CLASS_NAMES[c],
                "probability": round(p, 6),
                "malignant": c in MALIGNANT,
            }
            for c, p in result.ranking
        ],
        excluded=[
            {
                "code": e.cls,
                "name": CLASS_NAMES[e.cls],
                "original_probability": round(e.original_prob, 6),
                "malignant": e.cls in MALIGNANT,
                "rule_id": e.rule_id,
                "reason": e.reason,
            }
            for e in result.excluded
        ],
        referral={
            "refer": referral.refer,
            "scores": referral.scores,
            "thresholds": referral.thresholds,
            "threshold_source": model.threshold_source,
            "reason": referral.reason,
        },
        image={
            "sha256": d.sha256,
            "format": d.format,
            "width": d.width,
            "height": d.height,
            "brightness": prepared.brightness,
            "contrast": prepared.contrast,
            "stored": form.consent_to_store_image,
        },
        timings=timings,
    ).model_dump(mode="json")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PredictionPublic,
    responses={200: {"description": "idempotent retry: the stored answer"}, **ERRORS},
)
async def create_prediction(
    state: StateDep,
    client: ClientDep,
    form: Annotated[PredictionCreate, Form(media_type="multipart/form-data")],
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
    ] = None,
) -> Any:
    """Classify a dermoscopic photo (JPEG/PNG) taken at ``body_location``.

    The answer is sent only after its record is committed. A retry with the same request id
    (``Idempotency-Key`` header or ``request_id`` field) gets the stored answer (200) and
    creates no second record.
    """
    start = time.perf_counter()
    settings, metrics = state.settings, state.metrics
    request_id = _request_id(form, idempotency_key)
    data = await form.image.read()
    if len(data) > settings.max_upload_bytes:
        raise ImageRejected(
            f"the image is {len(data)} bytes; the limit is {settings.max_upload_bytes}: "
            "send a smaller file",
            status_code=413,
        )
    digest = hashlib.sha256(data).hexdigest()
    fp = fingerprint(form, digest)
    if request_id is not None:
        stored = await state.db.run(crud.find_request, client, request_id)
        if stored is not None:
            return _replay(stored, fp, response)

    model = await state.catalog.served()
    t0 = time.perf_counter()
    prepared = await anyio.to_thread.run_sync(
        prepare_image,
        data,
        model.input_size,
        settings.max_pixels,
        digest,
        limiter=state.decode_limiter,
    )
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
            prepared = await anyio.to_thread.run_sync(
                prepare_image,
                data,
                fresh.input_size,
                settings.max_pixels,
                digest,
                limiter=state.decode_limiter,
            )
        model = fresh
        probs = await _predict(state, prepared, model)
    t2 = time.perf_counter()
    timings = {
        "decode_ms": round((t1 - t0) * 1000, 2),
        "inference_ms": round((t2 - t1) * 1000, 2),
        "total_ms": 0.0,
    }
    created_at = utcnow()
    answer = _answer(state, form, request_id, prepared, probs[0], model, timings, created_at)
    if form.consent_to_store_image:
        d = prepared.decoded
        await anyio.to_thread.run_sync(store_image, data, d.sha256, d.format, settings.image_dir)
    answer["timings"]["total_ms"] = round((time.perf_counter() - start) * 1000, 2)
    row = Prediction(
        id=answer["id"],
        created_at=created_at,
        client_id=client,
        request_id=request_id,
        request_fingerprint=fp,
        model_name=model.name,
        model_version=model.version,
        body_location=form.body_location,
        age=form.age,
        sex=form.sex,
        image_sha256=prepared.decoded.sha256,
        image_format=prepared.decoded.format,
        image_width=prepared.decoded.width,
        image_height=prepared.decoded.height,
        image_brightness=prepared.brightness,
        image_contrast=prepared.contrast,
        image_stored=form.consent_to_store_image,
        probabilities={c: float(p) for c, p in zip(CLASSES, probs[0], strict=True)},
        top_class=answer["top_class"],
        refer=answer["referral"]["refer"],
        answer=answer,
    )
    try:
        await state.db.run(crud.add_prediction, row)
    except IntegrityError:
        # A concurrent retry with the same request id committed first: answer as it did.
        stored = await state.db.run(crud.find_request, client, request_id or "")
        if stored is None:
            raise
        return _replay(stored, fp, response)

    metrics.stage.labels("decode").observe(t1 - t0)
    metrics.stage.labels("inference").observe(t2 - t1)
    metrics.predictions.labels(answer["top_class"], model.version).inc()
    metrics.referrals.labels(str(answer["referral"]["refer"]).lower()).inc()
    for e in answer["excluded"]:
        metrics.exclusions.labels(e["rule_id"], e["code"]).inc()
    response.headers["Location"] = f"{router.prefix}/{answer['id']}"
    return answer


async def _predict(state: AppState, prepared: PreparedImage, model: Any) -> np.ndarray:
    return await predict_with_retries(
        state.triton,
        prepared.model_input[None],
        int(model.version),
        state.settings.triton_timeout_s,
        state.settings.triton_retries,
    )


def _not_found(prediction_id: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"no prediction {prediction_id!r}: use the id returned by POST /v1/predictions",
    )


@router.get("/{prediction_id}", response_model=PredictionWithFeedback, responses=ERRORS)
async def read_prediction(state: StateDep, _: ClientDep, prediction_id: str) -> Any:
    """The stored answer of a prediction, its latest feedback and the feedback's history."""
    found = await state.db.run(crud.get_prediction, prediction_id)
    if found is None:
        raise _not_found(prediction_id)
    answer, feedback = found
    history = await state.db.run(crud.feedback_history, prediction_id) if feedback else []
    return {
        **answer,
        "feedback": feedback and {k: v for k, v in vars(feedback).items() if k != "changed"},
        "feedback_history": history,
    }


@router.post(
    "/{prediction_id}/feedback",
    response_model=FeedbackPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the same feedback was already recorded"}, **ERRORS},
)
async def create_feedback(
    state: StateDep, client: ClientDep, prediction_id: str, body: FeedbackCreate, response: Response
) -> Any:
    """Record the confirmed diagnosis. Sending the same feedback again changes nothing (200);
    a different one becomes the latest (201) and the previous stays in the audit trail."""
    args = (prediction_id, body.diagnosis, body.confirmation, client)
    try:
        record = await state.db.run(crud.record_feedback, *args)
    except IntegrityError:  # a concurrent first feedback won the insert: apply ours after it
        record = await state.db.run(crud.record_feedback, *args)
    if record is None:
        raise _not_found(prediction_id)
    if not record.changed:
        response.status_code = status.HTTP_200_OK
    return {k: v for k, v in vars(record).items() if k != "changed"}
