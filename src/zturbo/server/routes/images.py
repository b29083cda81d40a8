"""Generated images and the history: GET /api/images/{id} (``?size=`` for a thumbnail),
GET /api/images/{id}/info, GET /api/history, POST /api/metadata (a dropped PNG's parameters)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from PIL import Image

from zturbo.config.metadata import read
from zturbo.server.errors import ApiError
from zturbo.server.jobs import image_url
from zturbo.server.state import ServerState, state
from zturbo.server.uploads import read_image

router = APIRouter(tags=["images"])
IMAGE_ID = re.compile(r"[0-9a-f]{32}")
MAX_PAGE = 100
THUMB_MIN, THUMB_MAX = 32, 1024  # ?size= bounds (longest side, pixels)
# ids name one image forever (a new image gets a new id): browsers may keep them
IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}
MAX_OFFSET = 2**63 - 1  # SQLite's integers are 64-bit


def image_row(st: ServerState, image_id: str) -> dict[str, Any]:
    """An image's history row (or its row still waiting to be written), or 404 (ids are
    looked up, never joined into a path)."""
    row = None
    if IMAGE_ID.fullmatch(image_id):
        row = st.history.image(image_id) or st.jobs.pending_image(image_id)
    if row is None:
        raise ApiError(404, f"no image {image_id!r}", "not_found")
    return row


def image_path(st: ServerState, image_id: str) -> Path:
    """The file of an image id (local backend): it must lie inside the server's output dir."""
    path = st.history.file_of(image_row(st, image_id))
    if path is None:
        raise ApiError(404, f"image {image_id} is no longer on disk", "not_found")
    return path


def image_png(st: ServerState, image_id: str) -> bytes:
    """The PNG bytes of an image id, from either backend (404 when gone)."""
    if not st.history.shared:
        return image_path(st, image_id).read_bytes()
    image_row(st, image_id)
    data = st.history.png(image_id)
    if data is None:
        raise ApiError(404, f"image {image_id} is no longer stored", "not_found")
    return data


def public(st: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    """A history row as clients see it: a URL instead of the file path, its time per image
    (``seconds``) and, for a teleport hit, the ``full_run`` it replayed (from the history)."""
    hidden = ("path", "job_images")
    return {**{k: v for k, v in row.items() if k not in hidden}, "url": image_url(row["id"]),
            **st.history.replay(row, row.get("job_images") or 1)}


@router.get("/api/images/{image_id}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
def get_image(image_id: str, request: Request,
              size: int | None = Query(None, ge=THUMB_MIN, le=THUMB_MAX,
                                       description="a JPEG thumbnail, longest side in pixels")):
    """The PNG, with its parameters in the ``parameters`` and ``zturbo`` text chunks; with
    ``size``, a JPEG thumbnail (never larger than the image). A plain ``def``: thumbnails are
    made in FastAPI's thread pool, off the event loop."""
    st = state(request)
    if st.history.shared:  # the bytes live in the shared store
        png: Path | io.BytesIO = io.BytesIO(image_png(st, image_id))
        if size is None:
            return Response(png.getvalue(), media_type="image/png", headers=IMMUTABLE)
    else:
        png = image_path(st, image_id)
        if size is None:
            return FileResponse(png, media_type="image/png", headers=IMMUTABLE)
    return Response(thumbnail(png, size), media_type="image/jpeg", headers=IMMUTABLE)


def thumbnail(png: Path | io.BytesIO, size: int) -> bytes:
    """A JPEG of the PNG (a file or bytes) whose longest side is at most ``size`` pixels."""
    with Image.open(png) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
    return out.getvalue()


@router.get("/api/images/{image_id}/info")
def image_info(image_id: str, request: Request):
    """One history row (as in ``/api/history``): request, seed, timings, teleport report,
    ``seconds`` and ``full_run``."""
    return image_public(state(request), image_id)


def image_public(st: ServerState, image_id: str) -> dict[str, Any]:
    """An image's history row as clients see it (404: unknown id, or its file gone)."""
    row = image_row(st, image_id)
    if not st.history.shared:
        image_path(st, image_id)
    return public(st, row)


@router.get("/api/history")
def history(request: Request, q: str = Query("", max_length=1000),
            limit: int = Query(24, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=MAX_OFFSET)):
    """Images, newest first; ``q`` searches the prompts (any case). A plain ``def``: FastAPI
    runs it in its thread pool, so a search over a long history never stalls the loop."""
    return history_page(state(request), q, limit, offset)


def history_page(st: ServerState, q: str, limit: int, offset: int) -> dict[str, Any]:
    """One page of the history, newest first (``q``: a search in the prompts)."""
    rows, total = st.history.images(query=q, limit=limit, offset=offset)
    return {"items": [public(st, r) for r in rows], "total": total, "limit": limit,
            "offset": offset}


@router.post("/api/metadata")
async def metadata(request: Request, image: UploadFile = File(...)):
    """The generation parameters stored in a PNG (zturbo's JSON, or A1111 ``parameters``)."""
    upload = await read_image(image, state(request).settings, decode=False)
    data = read(io.BytesIO(upload.data), image.filename or "the upload")
    return {"request": data.get("request", {}), "model": data.get("model"),
            "parameters": data.get("parameters", "")}
