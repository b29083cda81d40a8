"""POST /api/encode: prompt embeddings as a safetensors file (the encode/generate split).

A text-encoder machine answers this; a generator-only machine (``zturbo generate
--embeddings``) turns the file into images without ever loading the text encoder.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from zturbo.config import Int, make_request
from zturbo.generation import embedfile
from zturbo.server.errors import ApiError, unavailable
from zturbo.server.schemas import Text
from zturbo.server.state import state

router = APIRouter(tags=["native"])


def _encode(st, req):
    """The default model's encoding of ``req`` (loaded again if it was evicted; held
    meanwhile)."""
    with st.pool.acquire(None) as engine:
        if getattr(engine.pipe, "text_encoder", None) is None:
            raise ApiError(409, "this server runs generator-only (no text encoder): encode "
                                "elsewhere")
        return embedfile.encode(engine, req)


class EncodeBody(BaseModel):
    """The request fields that decide an embedding."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str | None = None
    template: Text | None = None
    hidden_layer: Int | None = None
    long_prompt: Text | None = None
    max_sequence_length: Int | None = Field(None, ge=1)


@router.post("/api/encode", responses={200: {"content": {"application/octet-stream": {}}}})
async def encode(body: EncodeBody, request: Request):
    """Encode the prompt; answers the safetensors bytes, metadata in the file's header."""
    st = state(request)
    if not st.started or (st.engine is None and not st.several):
        raise unavailable(st.load_error or "the model is still loading")
    req = make_request(st.settings, **body.model_dump(exclude_none=True))
    file = await asyncio.to_thread(_encode, st, req)  # takes the engine lock
    return Response(embedfile.to_bytes(file), media_type="application/octet-stream",
                    headers={"X-Zturbo-Token-Count": file.metadata["token_count"],
                             "X-Zturbo-Encoder": file.metadata["encoder_fingerprint"][:16]})
