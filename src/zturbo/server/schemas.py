"""Request bodies of the HTTP API, and the one way they become a ``zturbo.Request``.

The native body is derived from ``Request`` itself (every field, optional), so a field
added to Request (a template, a hidden layer...) is accepted by the API with no change
here, and validated once, by ``make_request``, like every other front end.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import Request, Settings, bucket_size, make_request
from .errors import ApiError


def _optional_request_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in Request.model_fields.items():
        if name == "prompt":
            fields[name] = (str, Field(..., description="what to draw"))
        else:
            fields[name] = (info.annotation | None, Field(None, description=info.description))
    return fields


RequestFields = create_model(
    "RequestFields", __config__=ConfigDict(extra="forbid"), **_optional_request_fields()
)


class JobBody(RequestFields):  # type: ignore[misc, valid-type]
    """POST /api/jobs: Request fields, plus an official aspect/bucket instead of a size."""

    aspect: str | None = Field(None, description="official aspect, e.g. 16:9 (sets the size)")
    bucket: int = Field(1024, description="bucket for aspect: 1024, 1280 or 1536")


class GenerateBody(JobBody):
    """POST /api/generate: a job body and how to answer."""

    format: Literal["png", "json"] = Field("png", description="png: the image; json: base64")


SERVER_FIELDS = {"aspect", "bucket", "format"}


def request_from_body(settings: Settings, body: BaseModel, extra: dict | None = None,
                      defaults: dict | None = None) -> Request:
    """A validated Request from a native body (400 with the message on bad values).

    ``extra`` adds fields the body cannot carry (img2img source hashes); ``defaults`` fill
    fields the body left out (img2img: the source's size).
    """
    fields = {**(defaults or {}), **body.model_dump(exclude_none=True, exclude=SERVER_FIELDS),
              **(extra or {})}
    aspect = getattr(body, "aspect", None)
    if aspect:
        if "width" in fields or "height" in fields:
            raise ApiError(400, "give either aspect (and bucket) or width and height, not both")
        fields["width"], fields["height"] = bucket_size(aspect, body.bucket)
    return make_request(settings, **fields)


_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


class OpenAIGenerate(BaseModel):
    """POST /v1/images/generations: OpenAI's fields, plus zturbo's through ``extra_body``.

    Other Request fields (e.g. a template) pass through by name and are validated by
    make_request; unknown names are a 400.
    """

    model_config = ConfigDict(extra="allow")

    prompt: str
    n: int | None = Field(None, ge=1, description="images (seeds seed, seed+1, ...)")
    size: str | None = Field(None, description='"WxH" (multiples of 16) or "auto"')
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    model: str | None = Field(None, description="accepted and ignored: one model per server")
    output_format: Literal["png"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    background: str | None = None
    moderation: str | None = None
    # zturbo extras (OpenAI's names where diffusers has one)
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    shift: float | None = None
    negative_prompt: str | None = None
    teleport: bool | None = None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size in (None, "", "auto"):
        return None, None
    match = _SIZE.fullmatch(size.strip().lower())
    if not match:
        raise ApiError(400, f"size {size!r} is not WIDTHxHEIGHT like 1024x1024 (or auto)")
    return int(match.group(1)), int(match.group(2))


def request_from_openai(settings: Settings, body: OpenAIGenerate) -> Request:
    """The Request an OpenAI-style body asks for."""
    width, height = parse_size(body.size)
    fields: dict[str, Any] = {
        "prompt": body.prompt, "num_images": body.n, "width": width, "height": height,
        "seed": body.seed, "steps": body.num_inference_steps, "guidance": body.guidance_scale,
        "shift": body.shift, "negative_prompt": body.negative_prompt, "teleport": body.teleport,
    }
    extra = dict(body.model_extra or {})
    unknown = sorted(set(extra) - set(Request.model_fields))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    return make_request(settings, **{**fields, **extra})
