"""``/v1/models``: what Triton serves, with each loaded version's metadata.json."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import PlainTextResponse

from serving.api.deps import ClientDep, StateDep
from serving.api.schemas import ModelsPublic, Problem
from serving.model_info import model_card
from serving.problems import ProblemError

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsPublic)
async def list_models(state: StateDep, _: ClientDep) -> Any:
    """The served model: Triton's tensors, its loaded versions, their metadata, and the gate
    of the served version (what it refuses, and what it lacks).

    503 with Retry-After when Triton cannot be reached or the model is not loaded.
    """
    described = await state.catalog.describe()
    served = await state.catalog.served()
    gate = served.gate.describe()
    return {"models": [{**described, "served_version": served.version, "gate": gate}]}


@router.get(
    "/versions/{version}/card",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "the card, Markdown"},
        404: {"model": Problem, "description": "no such version, or one without a card"},
    },
)
async def read_model_card(
    state: StateDep, _: ClientDep, version: Annotated[int, Path(ge=1, le=2**31 - 1)]
) -> PlainTextResponse:
    """The model card of a version (training/evaluation/model_card.py): intended use, data,
    evaluation with intervals, per-class and subgroup figures, operating points, what it
    refuses, known limits. The page ``/model-cards/{version}`` shows it to people."""
    try:
        card = model_card(state.settings.model_repository, state.settings.model_name, version)
    except FileNotFoundError as exc:
        raise ProblemError("not-found", str(exc)) from None
    return PlainTextResponse(card, media_type="text/markdown; charset=utf-8")
