"""``/v1/predictions``: upload a photo, read a prediction, send feedback."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Form, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from contracts.images import decode_image
from serving import explain, problems
from serving import predictions as service
from serving.api.deps import ClientDep, StateDep
from serving.api.schemas import (
    ClassCode,
    FeedbackCreate,
    FeedbackPublic,
    PredictionCreate,
    PredictionPublic,
    PredictionWithFeedback,
    Problem,
    RefusalProblem,
    ValidationProblem,
)
from serving.db import crud
from serving.problems import ProblemError
from serving.request_context import annotate
from serving.storage import image_path

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or invalid API key"},
    409: {
        "model": Problem,
        "description": "feedback for a refused upload: no diagnosis to confirm",
    },
    413: {"model": Problem, "description": "image too large (bytes or pixels)"},
    415: {"model": Problem, "description": "not a JPEG or PNG"},
    422: {"model": ValidationProblem, "description": "invalid field or unreadable image"},
    503: {
        "model": Problem,
        "description": "Triton or the database is unavailable; retry after Retry-After",
    },
}
REFUSED = {
    "model": ValidationProblem | RefusalProblem | Problem,
    "description": "invalid field or unreadable image (`detail`, `errors`); or REFUSED: the "
    "image is not a usable dermoscopic photo of a skin lesion, so it gets no diagnosis "
    "(`detail`: what is wrong and what to do, `code`: the reason, one of too_small, "
    "aspect_ratio, uniform, colourless, underexposed, overexposed, blurred, "
    "out_of_distribution, multiple_images; `refusal`: what was measured). With "
    "SKIN_REFUSAL_MODE=flag a refused image gets a 201 with `refused` set and the ranking "
    "withheld instead (multiple_images stays a 422). A retry with the same request id gets "
    "the same refusal. Also 422: the request id reused for a different upload "
    "(`type` /problems/idempotency-key-reused).",
}


def _request_id(form: PredictionCreate, header: str | None) -> str | None:
    if header is not None and form.request_id is not None and header != form.request_id:
        detail = "the Idempotency-Key header and the request_id field differ: send one of them"
        raise ProblemError(
            "invalid-request", detail, errors=[{"field": "request_id", "message": detail}]
        )
    return header if header is not None else form.request_id


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PredictionPublic,
    responses={
        200: {"description": "idempotent retry: the stored answer"},
        **ERRORS,
        422: REFUSED,
    },
)
async def create_prediction(
    request: Request,
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
    creates no second record. An image that is not a usable dermoscopic lesion photo gets no
    diagnosis: 422 with the reason (see the 422 answer), recorded as a refusal.
    """
    started = time.perf_counter()
    request_id = _request_id(form, idempotency_key)
    # The form model keeps the last of repeated parts: count the image parts in the raw form
    # (parsed once by FastAPI, cached on the request).
    parts = (await request.form()).getlist("image")
    others = tuple([p.encode() if isinstance(p, str) else await p.read() for p in parts[:-1]])
    upload = service.Upload(form, await form.image.read(), request_id, client, started, others)
    try:
        created = await service.create_prediction(state, upload)
    except service.RequestIdReused as exc:
        raise ProblemError("idempotency-key-reused", str(exc)) from None
    _annotate(created, client)
    if created.rejected:  # the stored problem: a retry gets the same
        headers = {"Idempotent-Replayed": "true"} if created.replayed else {}
        answer = created.answer
        if "type" not in answer:  # recorded before answers were RFC 9457 problems
            answer = problems.body("image-refused", 422, instance=router.prefix, **answer)
        return JSONResponse(answer, 422, headers, media_type=problems.MEDIA_TYPE)
    if created.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    else:
        response.headers["Location"] = f"{router.prefix}/{created.answer['id']}"
    return created.answer


def _annotate(created: service.Created, client: str) -> None:
    """What the access line says about this upload: the record, the version, Triton's time."""
    answer = created.answer
    refusal = answer.get("refusal") or {}
    model = answer.get("model") or refusal.get("model") or {}
    annotate(
        client=client,
        prediction_id=answer.get("id") or refusal.get("id"),
        model_version=f"{model['name']}/{model['version']}" if model else None,
        triton_ms=(answer.get("timings") or {}).get("inference_ms"),
        refused=(answer.get("refused") or answer).get("code"),
        replayed=created.replayed,
    )


def _not_found(prediction_id: str) -> ProblemError:
    return ProblemError(
        "not-found",
        f"no prediction {prediction_id!r}: use the id returned by POST /v1/predictions",
    )


@router.get("/{prediction_id}", response_model=PredictionWithFeedback, responses=ERRORS)
async def read_prediction(state: StateDep, _: ClientDep, prediction_id: str) -> Any:
    """The stored answer of a prediction, its latest feedback and the feedback's history; also
    the answer of an upload refused in flag mode (``refused`` set, no ranking)."""
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


@router.get(
    "/{prediction_id}/overlay.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the photo with the map over it"},
        404: {"model": Problem, "description": "no such prediction, no map, or no such class"},
        409: {"model": Problem, "description": "the photo was not kept (no consent)"},
    },
)
async def read_overlay(
    state: StateDep,
    _: ClientDep,
    prediction_id: str,
    code: Annotated[ClassCode | None, Query(description="default: the top class")] = None,
) -> Response:
    """Where the model looked, drawn by the gateway: the kept photo with the class's map laid
    over it (blue: not for the class, red: counts most for it). Needs a prediction made with
    ``explain=true`` by a version with maps, and a photo kept with consent."""
    found = await state.db.run(crud.get_prediction, prediction_id)
    if found is None:
        raise _not_found(prediction_id)
    answer, _feedback = found
    maps = {m["code"]: m["map"] for m in (answer.get("explanation") or {}).get("maps", [])}
    if not maps:
        raise ProblemError(
            "not-found",
            f"prediction {prediction_id!r} has no map: upload with explain=true to a version "
            "that has them",
        )
    chosen = code or next(iter(maps))
    if chosen not in maps:
        raise ProblemError(
            "not-found", f"no map for {chosen!r}: the answer holds {', '.join(maps)}"
        )
    image = answer["image"]
    path = image_path(image["sha256"], image["format"], state.settings.image_dir)
    if not (image.get("stored") and path.is_file()):
        raise ProblemError(
            "photo-not-kept",
            "the photo was not kept (no consent to store it): the page draws the map over the "
            "photo it still has",
        )
    settings = state.settings

    def draw() -> bytes:
        rgb = decode_image(path.read_bytes(), settings.max_pixels).rgb
        return explain.png(explain.overlay(rgb, maps[chosen]))

    png = await anyio.to_thread.run_sync(draw, limiter=state.decode_limiter)
    return Response(png, media_type="image/png")


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
        reason = await state.db.run(crud.refusal_reason, prediction_id)
        if reason is not None:
            raise ProblemError(
                "prediction-refused",
                f"{prediction_id!r} was refused ({reason}): it has no diagnosis to confirm; "
                "send feedback for a prediction",
            )
        raise _not_found(prediction_id)
    if not record.changed:
        response.status_code = status.HTTP_200_OK
    return {k: v for k, v in vars(record).items() if k != "changed"}
