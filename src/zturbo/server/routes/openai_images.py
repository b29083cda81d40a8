"""OpenAI-compatible images API: POST /v1/images/generations and /v1/images/edits."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile

from zturbo.config import make_request
from zturbo.generation.img2img import as_source, source_size
from zturbo.server import sync
from zturbo.server.control import body_source
from zturbo.server.routes.images import image_png
from zturbo.server.schemas import OpenAIGenerate, parse_size, request_from_openai
from zturbo.server.state import state
from zturbo.server.uploads import read_image

router = APIRouter(prefix="/v1/images", tags=["openai"])


@router.post("/generations")
async def generations(body: OpenAIGenerate, request: Request):
    """OpenAI's ``images.generate``: ``data`` holds ``b64_json`` PNGs or ``url``s."""
    st = state(request)
    model = openai_model(st, body.model)
    # the base64 control image leaves the extra fields here (the rest are Request fields)
    source, hashes, size = await body_source(st, body.model_extra or {})
    req = await asyncio.to_thread(request_from_openai, st.pool.settings_of(model), body,
                                  {**size, **hashes})  # hashes LoRA files
    job = await sync.run(st, req, request, source=source, model=model)
    return _answer(st, job, request, body.response_format)


def openai_model(st, name: str | None) -> str | None:
    """The model an OpenAI body's ``model`` picks: by name with several models; a server
    of one model ignores it (clients send their own default, e.g. dall-e-3)."""
    return name if st.several else None


def _answer(st, job, request: Request, response_format: str) -> dict:
    """The OpenAI images response for a finished job."""
    # a configured public_url, never the client's Host header, when one is set
    base = st.settings.public_url or str(request.base_url).rstrip("/")
    data = []
    for image in job.images:
        ran = image.get("request") or {}
        revised = ran.get("prompt") if ran.get("original_prompt") else None
        item = {"revised_prompt": revised, "seed": image["seed"], "id": image["id"]}
        if response_format == "url":
            item["url"] = base + image["url"]
        else:
            item["b64_json"] = base64.b64encode(image_png(st, image["id"])).decode()
        data.append(item)
    return {"created": int(job.created), "data": data, "output_format": "png",
            "size": f"{job.request.width}x{job.request.height}"}


@router.post("/edits")
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
    model: str | None = Form(None, max_length=200, description="the model, by name"),
):
    """OpenAI's ``images.edit``: img2img from the uploaded image (inpaint with a mask: white
    is repainted). The upload is checked (size, pixels, decompression bombs); the output size
    defaults to the image's (down to multiples of 16)."""
    st = state(request)
    source_upload = await read_image(image, st.settings)
    mask_upload = await read_image(mask, st.settings) if mask is not None else None
    source, hashes = await asyncio.to_thread(  # pixel hashing off the event loop
        as_source, source_upload.image, mask_upload.image if mask_upload else None,
        max_pixels=st.settings.max_pixels)
    width, height = parse_size(size)
    if width is None:
        width, height = source_size(source)["width"], source_size(source)["height"]
    model = openai_model(st, model)
    req = make_request(st.pool.settings_of(model), prompt=prompt, num_images=n, width=width, height=height,
                       seed=seed, steps=num_inference_steps, strength=strength, **hashes)
    job = await sync.run(st, req, request, source=source, model=model)
    return _answer(st, job, request, response_format)
