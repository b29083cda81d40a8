"""OpenAI-compatible images API: POST /v1/images/generations and /v1/images/edits."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile

from ...config import make_request
from .. import sync
from ..app import state
from ..errors import ApiError
from ..schemas import OpenAIGenerate, parse_size, request_from_openai
from ..uploads import read_image
from .images import image_path

router = APIRouter(prefix="/v1/images", tags=["openai"])


@router.post("/generations")
async def generations(body: OpenAIGenerate, request: Request):
    """OpenAI's ``images.generate``: ``data`` holds ``b64_json`` PNGs or ``url``s."""
    st = state(request)
    job = await sync.run(st, request_from_openai(st.settings, body), request)
    base = str(request.base_url).rstrip("/")
    data = []
    for image in job.images:
        item = {"revised_prompt": None, "seed": image["seed"], "id": image["id"]}
        if body.response_format == "url":
            item["url"] = base + image["url"]
        else:
            item["b64_json"] = base64.b64encode(image_path(st, image["id"]).read_bytes()).decode()
        data.append(item)
    return {"created": int(job.created), "data": data, "output_format": "png",
            "size": f"{job.request.width}x{job.request.height}"}


@router.post("/edits", status_code=501)
async def edits(
    request: Request,
    image: UploadFile = File(..., description="the image to edit (PNG, JPEG, WebP)"),
    prompt: str = Form(...),
    strength: float = Form(0.6, ge=0.0, le=1.0, description="how far from the image to go"),
    n: int | None = Form(None, ge=1),
    size: str | None = Form(None),
    response_format: Literal["b64_json", "url"] = Form("b64_json"),
    mask: UploadFile | None = File(None, description="white where to repaint"),
    seed: int | None = Form(None),
    num_inference_steps: int | None = Form(None),
):
    """OpenAI's ``images.edit``. The upload is read and checked (size, pixels, decompression
    bombs); generation answers 501 until img2img exists in the engine."""
    st = state(request)
    await read_image(image, st.settings)
    if mask is not None:
        await read_image(mask, st.settings)
    width, height = parse_size(size)
    make_request(st.settings, prompt=prompt, num_images=n, width=width, height=height,
                 seed=seed, steps=num_inference_steps)  # the same checks a generation gets
    raise ApiError(501, "image edits need img2img, which this server does not have yet; "
                        "/v1/images/generations works", "not_implemented")
