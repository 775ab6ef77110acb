"""``/v1/models``: what Triton serves, with each loaded version's metadata.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.api.deps import ClientDep, StateDep
from serving.api.schemas import ModelsPublic

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
