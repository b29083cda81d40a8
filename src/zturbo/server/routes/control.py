"""POST /api/control/preview: the control map a generation would feed the ControlNet (the
studio's type picker shows it; ``zturbo control preview`` on the command line)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from zturbo.config.metadata import png_bytes
from zturbo.generation.control_preview import preview_map
from zturbo.server.state import state
from zturbo.server.uploads import read_image

router = APIRouter(tags=["native"])


@router.post("/api/control/preview", responses={200: {"content": {"image/png": {}}}})
async def preview(
    request: Request,
    image: UploadFile = File(..., description="the control image"),
    control_type: str = Form("canny", description="canny, softedge, lineart, grayscale, tile, depth, pose, normal or map"),
    canny_low: int | None = Form(None, description="Canny low threshold (canny)"),
    canny_high: int | None = Form(None, description="Canny high threshold (canny)"),
    tile_factor: int | None = Form(None, description="how many times the tile map shrinks (tile)"),
):
    """The map of the uploaded image as a PNG, made as a generation makes it; a bad type or
    parameter is a 400 with the Request's own message."""
    st = state(request)
    upload = await read_image(image, st.settings)
    fields = {"control_type": control_type, "canny_low": canny_low, "canny_high": canny_high,
              "tile_factor": tile_factor}
    made = await asyncio.to_thread(preview_map, st.settings, upload.image, fields)
    return Response(await asyncio.to_thread(png_bytes, made), media_type="image/png")
