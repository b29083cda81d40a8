"""Request bodies of the HTTP API, and the one way they become a ``zturbo.Request``.

The native body is derived from ``Request`` itself (every field, optional), so a field
added to Request (a template, a hidden layer...) is accepted by the API with no change
here, and validated once, by ``make_request``, like every other front end.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model

from zturbo.config import (
    MAX_TEXT_CHARS,
    Bool,
    Float,
    Int,
    Request,
    Settings,
    bucket_size,
    make_request,
)
from zturbo.server.errors import ApiError

# What a native body's field keeps of Request's: its strictness and the forms it accepts
# (LoRA "NAME:SCALE", pass strings), so every endpoint takes and refuses the same values.
_CARRIED = (BeforeValidator, Strict)
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


def request_fields(exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Request's fields as a body's (``create_model``): the prompt required, every other
    one optional (None: the settings' default), ``exclude`` left out."""
    fields: dict[str, Any] = {}
    for name, info in Request.model_fields.items():
        if name in exclude:
            continue
        if name == "prompt":
            fields[name] = (str, Field(..., description="what to draw"))
            continue
        carried = [m for m in info.metadata if isinstance(m, _CARRIED)]
        annotation = info.annotation | None
        if carried:
            annotation = Annotated[annotation, *carried]
        fields[name] = (annotation, Field(None, description=info.description))
    return fields


BODY_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)  # unknown names are refused
RequestFields = create_model("RequestFields", __config__=BODY_CONFIG, **request_fields())


class JobBody(RequestFields):  # type: ignore[misc, valid-type]
    """POST /api/jobs: Request fields, plus an official aspect/bucket instead of a size."""

    aspect: Text | None = Field(None, description="official aspect, e.g. 16:9 (sets the size)")
    bucket: Int = Field(1024, description="bucket for aspect: 1024, 1280 or 1536")
    control_image_b64: str | None = Field(
        None, description="the control image as base64 (or a data: URL); it sets "
                          "control_image, and by default the size")
    model: Text | None = Field(None, description="the model to run, by name (GET /v1/models; "
                                                 "default: the server's default model)")


class GenerateBody(JobBody):
    """POST /api/generate: a job body and how to answer."""

    format: Literal["png", "json"] = Field("png", description="png: the image; json: base64")


# what a body holds beside Request fields (how to size, answer, pick the model...)
SERVER_FIELDS = set(GenerateBody.model_fields) - set(RequestFields.model_fields)


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


_SIZE = re.compile(r"([0-9]+)x([0-9]+)")  # ASCII digits only (config.ascii_digits)
MAX_SIDE_DIGITS = 9  # a side with more digits is over any pixel limit (and int() stays cheap)


class OpenAIGenerate(BaseModel):
    """POST /v1/images/generations: OpenAI's fields, plus zturbo's through ``extra_body``.

    Other Request fields (e.g. a template) pass through by name and are validated by
    make_request; unknown names are a 400.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str
    n: Int | None = Field(None, ge=1, description="images (seeds seed, seed+1, ...)")
    size: Text | None = Field(None, description='"WxH" (multiples of 16) or "auto"')
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    model: Text | None = Field(None, description="the model to run, by name (GET /v1/models); "
                               "ignored by a server of one model")
    output_format: Literal["png"] | None = None
    quality: Text | None = None
    style: Text | None = None
    user: Text | None = None
    background: Text | None = None
    moderation: Text | None = None
    # zturbo extras (OpenAI's names where diffusers has one)
    seed: Int | None = None
    num_inference_steps: Int | None = None
    guidance_scale: Float | None = None
    shift: Float | None = None
    negative_prompt: str | None = None
    teleport: Bool | None = None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size in (None, "", "auto"):
        return None, None
    match = _SIZE.fullmatch(size.strip().lower())
    if not match:
        raise ApiError(400, f"size {size!r} is not WIDTHxHEIGHT like 1024x1024 (or auto)")
    if max(len(match.group(1)), len(match.group(2))) > MAX_SIDE_DIGITS:
        raise ApiError(400, f"size {size[:40]!r} is over the pixel limit (setting max_pixels)")
    return int(match.group(1)), int(match.group(2))


def request_from_openai(settings: Settings, body: OpenAIGenerate,
                        pixels: dict[str, Any] | None = None) -> Request:
    """The Request an OpenAI-style body asks for; ``pixels``: the hashes of the pixels sent
    with it (a base64 control image) and the size they default to."""
    pixels = pixels or {}
    width, height = parse_size(body.size)
    if width is None:
        width, height = pixels.get("width"), pixels.get("height")
    fields: dict[str, Any] = {
        "prompt": body.prompt, "num_images": body.n, "width": width, "height": height,
        "seed": body.seed, "steps": body.num_inference_steps, "guidance": body.guidance_scale,
        "shift": body.shift, "negative_prompt": body.negative_prompt, "teleport": body.teleport,
    }
    extra = dict(body.model_extra or {})
    unknown = sorted(set(extra) - set(Request.model_fields))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    hashes = {k: v for k, v in pixels.items() if k not in ("width", "height")}
    return make_request(settings, **{**fields, **extra, **hashes})
