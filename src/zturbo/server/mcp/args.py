"""The tools' arguments, and so their JSON schemas: derived from ``Request`` as the HTTP
bodies are (``schemas.request_fields``), so a field added to Request reaches agents with no
edit here, and is validated once, by ``make_request``."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, Field, create_model

from zturbo.config import Int, pixel_fields
from zturbo.server.routes.images import MAX_OFFSET, MAX_PAGE
from zturbo.server.routes.lab import SweepBody
from zturbo.server.schemas import BODY_CONFIG, JobBody, request_fields

IMAGE_URI = "zturbo://images/"
# Request names img2img and control pixels by hash; the tools take the pixels themselves
PIXEL_FIELDS = frozenset(pixel_fields())
SOURCE_FIELDS = PIXEL_FIELDS | {"strength"}  # img2img: the edit tool's
CONTROL_ARG = (str | None, Field(None, description="ControlNet: the control image (or a map "
                                 f"made elsewhere); base64 or {IMAGE_URI}<id>; needs a server "
                                 "loaded with a ControlNet"))


def _sizing() -> dict[str, Any]:
    """The job body's aspect and bucket (an official size instead of width and height),
    and its model (by name, on a server of several)."""
    return {name: (JobBody.model_fields[name].annotation, copy.copy(JobBody.model_fields[name]))
            for name in ("aspect", "bucket", "model")}


GenerateArgs = create_model(
    "GenerateArgs", __config__=BODY_CONFIG, **request_fields(SOURCE_FIELDS), **_sizing(),
    control_image=CONTROL_ARG)

EditArgs = create_model(
    "EditArgs", __config__=BODY_CONFIG, **request_fields(PIXEL_FIELDS), **_sizing(),
    image=(str, Field(..., description=f"the source image: base64 PNG/JPEG/WebP (a data: URL "
                                       f"too) or one of ours, {IMAGE_URI}<id>")),
    mask=(str | None, Field(None, description="inpaint: white where to repaint; base64 or "
                                              f"{IMAGE_URI}<id>")),
    control_image=CONTROL_ARG,
)


class ListImagesArgs(BaseModel):
    model_config = BODY_CONFIG

    query: str = Field("", max_length=1000, description="words to find in the prompts (any case)")
    limit: Int = Field(24, ge=1, le=MAX_PAGE, description="images per page")
    offset: Int = Field(0, ge=0, le=MAX_OFFSET, description="images to skip (newest first)")


class ImageArgs(BaseModel):
    model_config = BODY_CONFIG

    id: str = Field(..., max_length=100, description=f"an image id, or {IMAGE_URI}<id>")


class CancelArgs(BaseModel):
    model_config = BODY_CONFIG

    id: str = Field(..., max_length=100, description="a job id (in generate's progress "
                                                     "messages and info's queue) or a sweep id")


class NoArgs(BaseModel):
    model_config = BODY_CONFIG


SweepArgs = SweepBody  # the HTTP route's body: the same limits
