"""Creating a prediction: idempotency, the gate, classification, the answer, its record and
metrics.

``POST /v1/predictions`` (:mod:`serving.api.routes.predictions`) parses the request into an
:class:`Upload` and calls :func:`create_prediction`. The answer is returned only after its
record is committed; a retry with the same request id gets the stored answer and creates no
second record.

An upload the gate refuses (:mod:`serving.gate`: a quality check, the model's out-of-distribution
score, or several images in one request) gets no diagnosis: its answer is a refusal
(``SKIN_REFUSAL_MODE``: a 422, or a 201 with the ranking withheld), recorded in ``refusals``,
never in ``predictions``, so the drift windows and live figures never see it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import anyio.to_thread
import numpy as np
from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError

from contracts import clinical as clinical_encoding
from contracts.images import DecodedImage, ImageRejected, PreparedImage
from contracts.labels import CLASS_NAMES, CLASSES, MALIGNANT
from contracts.quality import Refusal, multiple_images
from contracts.rules import Rules, apply_rules
from contracts.tensors import OOD_OUTPUT_NAME, OUTPUT_NAME
from serving import explain, problems
from serving.api.deps import AppState
from serving.api.schemas import PredictionCreate, PredictionPublic, RefusalProblem
from serving.db import crud
from serving.db.tables import Prediction, utcnow
from serving.db.tables import Refusal as RefusalRow
from serving.gate import FLAG, REJECT, Screened, check_score, screen
from serving.inference import predict_outputs_with_retries
from serving.metrics import Metrics
from serving.model_info import ServedModel
from serving.referral import decide, no_advice
from serving.storage import store_image
from serving.triton.client import TritonModelNotReady

ROUTE = "/v1/predictions"  # the instance of a refusal's problem
# Inserted with SQLAlchemy Core (Database.insert), not as ORM objects.
PREDICTIONS, REFUSALS = cast(Table, Prediction.__table__), cast(Table, RefusalRow.__table__)


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
        other_images: the bytes of further ``image`` parts (refused: one image per request).
    """

    form: PredictionCreate
    data: bytes
    request_id: str | None
    client: str
    started: float
    other_images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Classified:
    """The model's view of one upload, and how long it took."""

    model: ServedModel
    prepared: PreparedImage
    probs: np.ndarray  # [7], CLASSES order
    decode_s: float
    inference_s: float
    ood_score: float | None = None  # the model's score, where the version has one
    cams: np.ndarray | None = None  # [7, h, w] class-activation maps, when asked and available
    # The patient's fields the version read as unknown; None: an image-only version.
    clinical_unknown: list[str] | None = None


@dataclass(frozen=True)
class Refused:
    """An upload the gate refused, with what was measured before it was.

    Args:
        model: the version whose gate refused it (None: refused before any was asked).
        refusal: the reason code and the sentence.
        decoded: the decoded image (None: several images, none decoded).
        prepared: the model input (None: refused on its geometry, before the resize).
        features: what the checks measured.
        bound: the threshold it crossed.
        ood_score: the model's score, when the model was asked.
    """

    model: ServedModel | None
    refusal: Refusal
    decoded: DecodedImage | None = None
    prepared: PreparedImage | None = None
    features: dict[str, float] | None = None
    bound: float | None = None
    ood_score: float | None = None
    decode_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True)
class Created:
    """What :func:`create_prediction` answers: a new record's answer, or a stored one.

    ``rejected``: the answer is a refusal's 422 body (SKIN_REFUSAL_MODE=reject).
    """

    answer: dict[str, Any]
    replayed: bool
    rejected: bool = False


def fingerprint(form: PredictionCreate, image_sha256: str) -> str:
    """What makes two uploads the same request, for idempotency checks."""
    fields = form.model_dump(include={"body_location", "age", "sex", "consent_to_store_image"})
    if form.explain:  # only when asked: requests recorded before explain keep their fingerprint
        fields["explain"] = True
    return hashlib.sha256(json.dumps([image_sha256, fields], sort_keys=True).encode()).hexdigest()


def check_size(data: bytes, limit: int) -> None:
    """Raises ImageRejected (413) when the upload is larger than ``limit`` bytes."""
    if len(data) > limit:
        raise ImageRejected(
            f"the image is {len(data)} bytes; the limit is {limit}: send a smaller file",
            status_code=413,
        )


def upload_digest(upload: Upload, digest: str) -> str:
    """The image's sha256 (``digest``), or that of every image's in order when there are
    several: what the fingerprint of a request holds."""
    if not upload.other_images:
        return digest
    digests = [digest, *(hashlib.sha256(d).hexdigest() for d in upload.other_images)]
    return hashlib.sha256(",".join(digests).encode()).hexdigest()


def replay(stored: crud.StoredAnswer, fp: str) -> Created:
    """The stored answer of a retried request (a prediction's, or a refusal's).

    Raises:
        RequestIdReused: the stored request was a different upload.
    """
    if stored.fingerprint != fp:
        raise RequestIdReused(
            "this request id was already used for a different upload: use a new request id "
            "for a new request (the same id only for retrying the same one)"
        )
    return Created(stored.answer, replayed=True, rejected=stored.refused == REJECT)


async def _screen(state: AppState, data: bytes, model: ServedModel, digest: str) -> Screened:
    return await anyio.to_thread.run_sync(
        screen,
        data,
        model.input_size,
        state.settings.max_pixels,
        digest,
        model.gate.quality,
        limiter=state.decode_limiter,
    )


@dataclass(frozen=True)
class Patient:
    """What the form says about the patient, for a fusion version's second input."""

    age: Any = None
    sex: Any = None
    site: Any = None

    @classmethod
    def of(cls, form: PredictionCreate) -> Patient:
        return cls(form.age, form.sex, form.body_location)

    def encoded(self) -> np.ndarray:
        """``float32 [1, D]``: :func:`contracts.clinical.encode` (unknowns never raise)."""
        return clinical_encoding.encode(self.age, self.sex, self.site)[None]

    def unknown(self) -> list[str]:
        return clinical_encoding.unknown_fields(self.age, self.sex, self.site)


async def _predict(
    state: AppState,
    prepared: PreparedImage,
    model: ServedModel,
    explain: bool,
    patient: Patient | None = None,
) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """The probabilities of one image, its out-of-distribution score when the version's gate
    checks one, and its class-activation maps when asked and the version has them: one call.
    A fusion version also gets the patient's encoded age, sex and body site (all unknown
    without a ``patient``)."""
    names = [OUTPUT_NAME]
    if model.gate.ood_threshold is not None:
        names.append(OOD_OUTPUT_NAME)
    if explain and model.explain_output is not None:
        names.append(model.explain_output)
    outputs = await predict_outputs_with_retries(
        state.triton,
        prepared.model_input[None],
        int(model.version),
        tuple(names),
        state.settings.triton_timeout_s,
        state.settings.triton_retries,
        clinical=(patient or Patient()).encoded() if model.clinical else None,
    )
    score = outputs.get(OOD_OUTPUT_NAME)
    cams = outputs.get(model.explain_output) if model.explain_output else None
    return (
        outputs[OUTPUT_NAME][0],
        None if score is None else float(np.asarray(score).reshape(-1)[0]),
        None if cams is None else np.asarray(cams)[0],
    )


async def _classify(
    state: AppState,
    model: ServedModel,
    screened: Screened,
    decode_s: float,
    explain: bool,
    patient: Patient | None = None,
) -> Classified | Refused:
    """Refuse on the quality checks, or predict and refuse on the score, or classify."""
    if screened.refusal is not None or screened.prepared is None:
        assert screened.refusal is not None  # no model input only when refused
        return Refused(
            model,
            screened.refusal,
            screened.decoded,
            screened.prepared,
            screened.features(),
            screened.bound,
            decode_s=decode_s,
        )
    prepared = screened.prepared
    t0 = time.perf_counter()
    probs, score, cams = await _predict(state, prepared, model, explain, patient)
    inference_s = time.perf_counter() - t0
    threshold = model.gate.ood_threshold
    if score is not None and threshold is not None:
        refusal = check_score(score, threshold)
        if refusal is not None:
            features = screened.features()
            return Refused(
                model, refusal, screened.decoded, prepared, features, threshold, score,
                decode_s, inference_s,
            )  # fmt: skip
    unknown = (patient or Patient()).unknown() if model.clinical else None
    return Classified(model, prepared, probs, decode_s, inference_s, score, cams, unknown)


async def classify(
    state: AppState,
    data: bytes,
    digest: str,
    explain: bool = False,
    patient: Patient | None = None,
) -> Classified | Refused:
    """Decode for the served version, run its gate and predict, following a version change
    once. An image the quality checks refuse never reaches Triton.

    Raises:
        ImageRejected: the image cannot be used.
        TritonError: Triton failed (TritonModelNotReady again if the version did not change).
    """
    model = await state.catalog.served()
    t0 = time.perf_counter()
    screened = await _screen(state, data, model, digest)
    decode_s = time.perf_counter() - t0
    try:
        return await _classify(state, model, screened, decode_s, explain, patient)
    except TritonModelNotReady:
        # A promotion or rollback unloaded the version resolved for this request: resolve the
        # served one again and predict once more (its input size and gate may differ).
        state.catalog.forget()
        fresh = await state.catalog.served()
        if fresh.version == model.version:
            raise
        if (fresh.input_size, fresh.gate.quality) != (model.input_size, model.gate.quality):
            screened = await _screen(state, data, fresh, digest)
        return await _classify(state, fresh, screened, decode_s, explain, patient)


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
        # The class the version's decision rule names (contracts.decision), after the rules.
        "top_class": model.decision.name(after),
        "decision": {
            "rule": model.decision.rule,
            "tau": model.decision.tau,
            "most_probable": ruled.ranking[0][0],
        },
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
    answer["clinical"] = (
        {"used": False, "unknown": []}
        if result.clinical_unknown is None
        else {
            "used": True,
            "encoding": clinical_encoding.ENCODING_VERSION,
            "unknown": result.clinical_unknown,
        }
    )
    if form.explain:
        answer["explanation"] = (
            explain.explanation(result.cams, ruled.ranking)
            if result.cams is not None
            else explain.unavailable(model.version)
        )
    return PredictionPublic.model_validate(answer).model_dump(mode="json")


def prediction_row(
    upload: Upload, fp: str, result: Classified, answer: dict[str, Any], created_at: datetime
) -> dict[str, Any]:
    """The database record of a new answer: the ``predictions`` row's values."""
    form, decoded = upload.form, result.prepared.decoded
    return dict(
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


def refusal_public(refused: Refused) -> dict[str, Any]:
    """``RefusalPublic`` as JSON: the reason, its sentence and what was measured."""
    r = refused.refusal
    return {
        "code": r.code,
        "message": r.message,
        "features": refused.features,
        "ood_score": None if refused.ood_score is None else round(refused.ood_score, 6),
        "threshold": refused.bound,
    }


def _image_info(refused: Refused, stored: bool) -> dict[str, Any]:
    d, prepared = refused.decoded, refused.prepared
    assert d is not None  # several images are always rejected, never flagged
    return {
        "sha256": d.sha256,
        "format": d.format,
        "width": d.width,
        "height": d.height,
        "brightness": prepared.brightness if prepared is not None else None,
        "contrast": prepared.contrast if prepared is not None else None,
        "stored": stored,
    }


@dataclass(frozen=True)
class RefusalTicket:
    """How one refusal is answered and recorded: ``mode`` (``reject`` or ``flag``), its id and
    time, and whether the image is kept (consent, and one image to keep)."""

    mode: str
    id: str
    created_at: datetime
    stored: bool


def refusal_answer(upload: Upload, refused: Refused, ticket: RefusalTicket) -> dict[str, Any]:
    """The answer to a refused upload: the 422 body (``reject``), or a prediction's shape with
    ``refused`` set and no ranking, top class or referral (``flag``)."""
    model = refused.model
    model_ref = {"name": model.name, "version": model.version} if model is not None else None
    refusal_id, created_at = ticket.id, ticket.created_at
    if ticket.mode == REJECT:  # an RFC 9457 problem, kept whole to answer a retry the same
        body = problems.body(
            "image-refused",
            422,
            refused.refusal.message,
            ROUTE,
            code=refused.refusal.code,
            refusal={
                **refusal_public(refused),
                "id": refusal_id,
                "created_at": created_at,
                "request_id": upload.request_id,
                "model": model_ref,
            },
        )
        return RefusalProblem.model_validate(body).model_dump(mode="json")
    form = upload.form
    answer = {
        "id": refusal_id,
        "created_at": created_at,
        "request_id": upload.request_id,
        "body_location": form.body_location,
        "age": form.age,
        "sex": form.sex,
        "model": model_ref,
        "top_class": None,
        "ranking": [],
        "excluded": [],
        "referral": None,
        "image": _image_info(refused, ticket.stored),
        "timings": {
            "decode_ms": round(refused.decode_s * 1000, 2),
            "inference_ms": round(refused.inference_s * 1000, 2),
            "total_ms": 0.0,
        },
        "refused": refusal_public(refused),
    }
    return PredictionPublic.model_validate(answer).model_dump(mode="json")


def refusal_row(
    upload: Upload, fp: str, refused: Refused, ticket: RefusalTicket, answer: dict[str, Any]
) -> dict[str, Any]:
    """The database record of a refusal (in ``refusals``, never in ``predictions``): the
    row's values."""
    d, model = refused.decoded, refused.model
    return dict(
        id=ticket.id,
        created_at=ticket.created_at,
        client_id=upload.client,
        request_id=upload.request_id,
        request_fingerprint=fp,
        reason=refused.refusal.code,
        message=refused.refusal.message[:1000],
        mode=ticket.mode,
        model_name=model.name if model is not None else None,
        model_version=model.version if model is not None else None,
        ood_score=refused.ood_score,
        features=refused.features,
        image_sha256=d.sha256 if d is not None else None,
        image_format=d.format if d is not None else None,
        image_width=d.width if d is not None else None,
        image_height=d.height if d is not None else None,
        image_stored=ticket.stored,
        answer=answer,
    )


def observe_refusal(metrics: Metrics, refused: Refused) -> None:
    """Count a committed refusal in the Prometheus metrics (not as a prediction)."""
    if refused.decoded is not None:
        metrics.stage.labels("decode").observe(refused.decode_s)
    if refused.inference_s:
        metrics.stage.labels("inference").observe(refused.inference_s)
    metrics.refusals.labels(refused.refusal.code).inc()


async def refuse(state: AppState, upload: Upload, fp: str, refused: Refused) -> Created:
    """Record a refusal (the image kept only with consent) and answer it.

    Several images are always rejected (422): which one to flag would be a guess.
    """
    d = refused.decoded
    ticket = RefusalTicket(
        REJECT if d is None else state.settings.refusal_mode,
        str(uuid.uuid4()),
        utcnow(),
        upload.form.consent_to_store_image and d is not None,
    )
    answer = refusal_answer(upload, refused, ticket)
    if ticket.stored and d is not None:
        await anyio.to_thread.run_sync(
            store_image, upload.data, d.sha256, d.format, state.settings.image_dir
        )
    if ticket.mode == FLAG:
        answer["timings"]["total_ms"] = round((time.perf_counter() - upload.started) * 1000, 2)
    row = refusal_row(upload, fp, refused, ticket, answer)
    try:
        await state.db.insert(REFUSALS, row)
    except IntegrityError:
        # A concurrent retry with the same request id committed first: answer as it did.
        stored_answer = await state.db.run(crud.find_stored, upload.client, upload.request_id or "")
        if stored_answer is None:
            raise
        return replay(stored_answer, fp)
    observe_refusal(state.metrics, refused)
    return Created(answer, replayed=False, rejected=ticket.mode == REJECT)


async def create_prediction(state: AppState, upload: Upload) -> Created:
    """Classify an upload, store the record (and the image, with consent), return the answer;
    or refuse it (:func:`refuse`) when the gate says it is not a usable lesion photo.

    Raises:
        ImageRejected: too large, not a JPEG/PNG, or unreadable.
        RequestIdReused: the request id names a different upload.
        TritonError, DatabaseUnavailable: a dependency failed (503 upstream).
    """
    settings = state.settings
    check_size(upload.data, settings.max_upload_bytes)
    digest = hashlib.sha256(upload.data).hexdigest()
    fp = fingerprint(upload.form, upload_digest(upload, digest))
    if upload.request_id is not None:
        stored = await state.db.run(crud.find_stored, upload.client, upload.request_id)
        if stored is not None:
            return replay(stored, fp)
    if upload.other_images:
        return await refuse(
            state, upload, fp, Refused(None, multiple_images(1 + len(upload.other_images)))
        )

    result = await classify(
        state, upload.data, digest, upload.form.explain, Patient.of(upload.form)
    )
    if isinstance(result, Refused):
        return await refuse(state, upload, fp, result)
    created_at = utcnow()
    answer = build_answer(state.rules, upload, result, created_at)
    if upload.form.consent_to_store_image:
        d = result.prepared.decoded
        await anyio.to_thread.run_sync(
            store_image, upload.data, d.sha256, d.format, settings.image_dir
        )
    answer["timings"]["total_ms"] = round((time.perf_counter() - upload.started) * 1000, 2)
    try:
        await state.db.insert(PREDICTIONS, prediction_row(upload, fp, result, answer, created_at))
    except IntegrityError:
        # A concurrent retry with the same request id committed first: answer as it did.
        stored = await state.db.run(crud.find_stored, upload.client, upload.request_id or "")
        if stored is None:
            raise
        return replay(stored, fp)
    observe(state.metrics, result, answer)
    return Created(answer, replayed=False)
