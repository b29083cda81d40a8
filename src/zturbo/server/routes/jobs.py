"""The job API: submit (202), status, Server-Sent Events, cancel, and the active queue."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from zturbo.config import first_error
from zturbo.config.metadata import json_object
from zturbo.server import sync
from zturbo.server.control import CONTROL_B64, base64_control, body_source, pixels_source
from zturbo.server.errors import ApiError
from zturbo.server.jobs import Job, follow
from zturbo.server.schemas import JobBody, request_from_body
from zturbo.server.state import ServerState, state
from zturbo.server.store.base import TERMINAL
from zturbo.server.store.redis_store import BLOCK_S
from zturbo.server.uploads import read_image

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
JOB_ID = re.compile(r"[0-9a-f]{32}")


def _stored(st: ServerState, job_id: str) -> dict | None:
    return st.history.job(job_id) if JOB_ID.fullmatch(job_id) else None


def find_job(st: ServerState, job_id: str) -> Job | dict:
    """The job in memory, else its record in the store (a finished job of an earlier run, or
    with the shared backend a job another ingress runs), else 404."""
    job = st.jobs.get(job_id) or _stored(st, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}", "not_found")
    return job


def live_job(job_id: str, request: Request) -> Job | dict:
    """``find_job`` as a dependency."""
    return find_job(state(request), job_id)


@router.post("", status_code=202)
async def submit(body: JobBody, request: Request):
    """Queue a generation; follow it at ``events``. 429 with Retry-After when the queue is full."""
    st = state(request)
    source, hashes, size = await body_source(st, {CONTROL_B64: body.control_image_b64})
    return await _queue(st, body, source, hashes, size)


@router.post("/edit", status_code=202)
async def submit_edit(
    request: Request,
    image: UploadFile = File(..., description="the source image (img2img)"),
    fields: str = Form("{}", description="JSON object: the fields of a POST /api/jobs body (strength too)"),
    mask: UploadFile | None = File(None, description="white where to repaint (inpaint)"),
):
    """img2img / inpaint as a job (multipart; the web page's init image): like ``POST
    /api/jobs``, followed the same way. The size defaults to the image's. With
    ``control_image_b64`` in the fields (and a mask) it is a controlled inpaint."""
    st = state(request)
    body = _job_body(fields)
    source_upload = await read_image(image, st.settings)
    mask_upload = await read_image(mask, st.settings) if mask is not None else None
    control = await base64_control(st, body.control_image_b64)
    source, hashes, size = await pixels_source(
        st, source_upload.image, mask_upload.image if mask_upload else None, control)
    return await _queue(st, body, source, hashes, size)


@router.post("/control", status_code=202)
async def submit_control(
    request: Request,
    control_image: UploadFile = File(..., description="the control image (or a map made elsewhere)"),
    fields: str = Form("{}", description="JSON object: the fields of a POST /api/jobs body (control_type, control_scale...)"),
    image: UploadFile | None = File(None, description="the image to inpaint (with mask)"),
    mask: UploadFile | None = File(None, description="white where to repaint (controlled inpaint)"),
):
    """A ControlNet generation as a job (multipart; the web page's control image): like
    ``POST /api/jobs``, followed the same way. The size defaults to the control image's."""
    st = state(request)
    body = _job_body(fields)
    if body.control_image_b64 is not None:
        raise ApiError(400, "give one control image: the control_image file or "
                            "control_image_b64, not both")
    uploads = [await read_image(f, st.settings) if f is not None else None
               for f in (image, mask, control_image)]
    source, hashes, size = await pixels_source(st, *(u.image if u else None for u in uploads))
    return await _queue(st, body, source, hashes, size)


async def _queue(st: ServerState, body: JobBody, source, hashes: dict, size: dict) -> dict:
    """Validate the body as a Request of its model (off the loop: it hashes LoRA files),
    with the pixels' hashes and their size as defaults, and queue it."""
    req = await asyncio.to_thread(request_from_body, st.pool.settings_of(body.model), body,
                                  extra=hashes, defaults=size)
    return _accepted(st, await sync.queue(st, req, source, body.model))


def _job_body(fields: str) -> JobBody:
    """A multipart request's ``fields`` (a JSON object) as a job body, or a 422."""
    try:
        return JobBody.model_validate(json_object(fields, "fields"))
    except ValidationError as exc:
        raise ApiError(422, f"fields: {first_error(exc)}") from None


def _accepted(st: ServerState, job: Job) -> dict:
    summary = st.jobs.summary(job)
    return {"id": job.id, "status": summary["status"], "model": job.model,
            "queue_position": summary["queue_position"],
            "url": f"/api/jobs/{job.id}", "events": f"/api/jobs/{job.id}/events"}


@router.get("")
async def active(request: Request):
    """The running job and the queued ones, in order."""
    st = state(request)
    return {"jobs": [st.jobs.summary(job) for job in st.jobs.active()]}


@router.get("/{job_id}")
async def status(request: Request, job: Job | dict = Depends(live_job)):
    """Status, progress, queue position, and the images once done."""
    return state(request).jobs.summary(job) if isinstance(job, Job) else job


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def events(request: Request, job: Job | dict = Depends(live_job)
                 ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events from the start: ``queued`` (position), ``started``, ``step`` (with a
    preview data URL every few steps), then one of ``done``, ``error``, ``cancelled``. At
    most ``max_event_streams`` streams are open at once (more: 429, app.Guard)."""
    st = state(request)
    if isinstance(job, Job):
        stream = follow(st.jobs, job)
    elif st.history.shared:  # another ingress's job: its event log in the shared store
        stream = follow_stored(st.history, job)
    else:  # finished in an earlier run: its final state only
        yield ServerSentEvent(event=job["status"], data=job)
        return
    async for event in stream:
        yield ServerSentEvent(event=event["event"], data=event["data"])


async def follow_stored(store, record: dict) -> AsyncIterator[dict]:
    """A job's events from the shared store's log, from the first, until it ends. A job
    whose log is gone (expired) or that ended without a final event in it (seen ended
    before a whole empty wait) ends with its final state."""
    after, ended = "0-0", False
    while True:
        events = await asyncio.to_thread(store.events, record["id"], after, BLOCK_S)
        for after, event in events:
            yield event
            if event["event"] in TERMINAL:
                return
        if events:
            continue
        if ended:
            yield {"event": record["status"], "data": record}
            return
        record = await asyncio.to_thread(store.job, record["id"]) or record
        ended = record["status"] in TERMINAL


@router.post("/{job_id}/cancel")
async def cancel(request: Request, job: Job | dict = Depends(live_job)):
    """Cancel: a queued job at once, a running one at its next step. 409 once it ended."""
    return await cancel_job(state(request), job)


async def cancel_job(st: ServerState, job: Job | dict) -> dict:
    """Cancel a job (409 once it ended); its summary."""
    if isinstance(job, dict) and st.history.shared:  # another ingress runs it: ask its owner
        if await asyncio.to_thread(st.history.request_cancel, job["id"],
                                   "cancelled by the client"):
            return job
    if not isinstance(job, Job) or job.terminal:
        raise ApiError(409, f"job {job['id'] if isinstance(job, dict) else job.id} already "
                            "ended", "conflict")
    st.jobs.cancel(job.id)
    return st.jobs.summary(job)
