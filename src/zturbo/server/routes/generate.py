"""POST /api/generate: one synchronous generation, answered with the PNG (or JSON)."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from zturbo.server import sync
from zturbo.server.control import CONTROL_B64, body_source
from zturbo.server.errors import ApiError
from zturbo.server.routes.images import image_png
from zturbo.server.schemas import GenerateBody, request_from_body
from zturbo.server.state import state

router = APIRouter(tags=["native"])


@router.post("/api/generate", responses={200: {"content": {"image/png": {}}}})
async def generate(body: GenerateBody, request: Request):
    """Generate and answer with the PNG (``format: png``, one image) or JSON with base64
    PNGs (``format: json``). Headers name the image, its seed, the job, and what served it (``X-Zturbo-Served``:
    image, final_latent, resume or full; see docs/teleport.md), an enhanced prompt
    (``X-Zturbo-Enhanced-Prompt``, percent-encoded) and the job's warnings
    (``X-Zturbo-Warnings``: percent-encoded lines; the ``warnings`` list in JSON)."""
    st = state(request)
    source, hashes, size = await body_source(st, {CONTROL_B64: body.control_image_b64})
    req = await asyncio.to_thread(request_from_body, st.pool.settings_of(body.model), body,
                                  extra=hashes, defaults=size)  # hashes LoRA files
    if body.format == "png" and req.num_images > 1:
        raise ApiError(400, 'num_images > 1 needs "format": "json" (a PNG answer holds one image)')
    job = await sync.run(st, req, request, source, model=body.model)
    if body.format == "png":
        image = job.images[0]
        headers = {"X-Zturbo-Image-Id": image["id"], "X-Zturbo-Seed": str(image["seed"]),
                   "X-Zturbo-Job-Id": job.id,
                   "X-Zturbo-Served": str(image["teleport"].get("served", "full"))}
        ran = image.get("request") or {}
        if ran.get("original_prompt"):  # percent-encoded UTF-8: headers are Latin-1
            headers["X-Zturbo-Enhanced-Prompt"] = quote(ran["prompt"], safe="")
        if job.warnings:
            headers["X-Zturbo-Warnings"] = quote("\n".join(job.warnings), safe="")
        return Response(image_png(st, image["id"]), media_type="image/png", headers=headers)
    return {
        "job_id": job.id,
        "images": [{**image, "b64_png": base64.b64encode(
            image_png(st, image["id"])).decode()} for image in job.images],
        "timings": job.timings, "teleport": job.teleport, "warnings": job.warnings,
    }
