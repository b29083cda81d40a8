"""GET /v1/models: the models this server serves, OpenAI's list shape plus each one's state
(loaded, loading, not loaded, failed and why), footprint and counters."""

from __future__ import annotations

from fastapi import APIRouter, Request

from zturbo.server.errors import ApiError
from zturbo.server.pool import UnknownModel
from zturbo.server.state import state

router = APIRouter(prefix="/v1/models", tags=["openai"])


def model_record(record: dict) -> dict:
    """One model as OpenAI's ``Model`` (id, object, created, owned_by) plus its state."""
    return {"id": record["name"], "object": "model", "created": 0, "owned_by": "zturbo",
            **record}


@router.get("")
async def list_models(request: Request):
    """Every model, the default first (``default: true``)."""
    return {"object": "list", "data": [model_record(r) for r in state(request).pool.records()]}


@router.get("/{name}")
async def get_model(name: str, request: Request):
    """One model's record (404 for an unknown name, listing the names)."""
    try:
        return model_record(state(request).pool.state(name))
    except UnknownModel as exc:
        raise ApiError(404, str(exc), "model_not_found") from None
