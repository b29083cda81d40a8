"""Generated images and the history: GET /api/images/{id}, GET /api/history,
POST /api/metadata (the parameters in a dropped PNG)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse

from ...metadata import read
from ..state import ServerState, state
from ..errors import ApiError
from ..jobs import image_url
from ..uploads import read_image

router = APIRouter(tags=["images"])
IMAGE_ID = re.compile(r"[0-9a-f]{32}")
MAX_PAGE = 100


def image_path(st: ServerState, image_id: str) -> Path:
    """The file of an image id: ids are looked up, never joined into a path, and the file
    must lie inside the server's output dir."""
    row = st.history.image(image_id) if IMAGE_ID.fullmatch(image_id) else None
    if row is None:
        raise ApiError(404, f"no image {image_id!r}", "not_found")
    path = Path(row["path"]).resolve()
    if not path.is_relative_to(st.jobs.outputs.resolve()) or not path.is_file():
        raise ApiError(404, f"image {image_id} is no longer on disk", "not_found")
    return path


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A history row as clients see it: a URL instead of the file path."""
    return {**{k: v for k, v in row.items() if k != "path"}, "url": image_url(row["id"])}


@router.get("/api/images/{image_id}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
async def get_image(image_id: str, request: Request):
    """The PNG, with its parameters in the ``parameters`` and ``zturbo`` text chunks."""
    return FileResponse(image_path(state(request), image_id), media_type="image/png")


@router.get("/api/history")
def history(request: Request, q: str = Query("", max_length=1000),
            limit: int = Query(24, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)):
    """Images, newest first; ``q`` searches the prompts (any case). A plain ``def``: FastAPI
    runs it in its thread pool, so a search over a long history never stalls the loop."""
    rows, total = state(request).history.images(query=q, limit=limit, offset=offset)
    return {"items": [public(r) for r in rows], "total": total, "limit": limit,
            "offset": offset}


@router.post("/api/metadata")
async def metadata(request: Request, image: UploadFile = File(...)):
    """The generation parameters stored in a PNG (zturbo's JSON, or A1111 ``parameters``)."""
    upload = await read_image(image, state(request).settings, decode=False)
    data = read(io.BytesIO(upload.data))
    return {"request": data.get("request", {}), "model": data.get("model"),
            "parameters": data.get("parameters", "")}
