"""Synchronous requests over the job queue: submit, await the end, cancel if the client goes.

A client that disconnects from ``/api/generate`` or ``/v1/images/generations`` cancels its
job (at the next step); the worker enforces the per-request timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import Request as HttpRequest

from zturbo.config import Request
from zturbo.engine.lora import check_readable
from zturbo.generation.img2img import Source, check_source
from zturbo.server.errors import ApiError, unavailable
from zturbo.server.jobs import Job
from zturbo.server.state import ServerState

HUNG_MARGIN_S = 30.0


def submit(st: ServerState, request: Request, source=None, model: str | None = None) -> Job:
    """Queue a request for ``model`` (None: the default; 503 while the server starts or
    after its one model failed to load; 404 for an unknown model). Blocking (the job's
    history row is written): the handlers call ``queue``."""
    if st.load_error and not st.several:
        raise unavailable(f"the model failed to load: {st.load_error}")
    if not st.started or st.history is None:
        raise unavailable("the model is still loading; see /api/ready")
    # a job the worker would refuse never takes a queue slot
    check_source(request, source or Source())  # an image hash needs its pixels
    check_readable(request.loras, st.settings.lora_dirs)
    engine = st.pool.peek(model)
    if engine is not None:  # a model not loaded yet is checked by its worker
        engine.check_fits(request)
    return st.jobs.submit(request, source, model)


async def queue(st: ServerState, request: Request, source=None,
                model: str | None = None) -> Job:
    """``submit`` off the event loop: its history write may wait out a busy database."""
    return await asyncio.to_thread(submit, st, request, source, model)


def _cancel_queued(st: ServerState):
    def cancel(task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is None:
            st.jobs.cancel(task.result().id, "the request was cancelled")
    return cancel


async def _disconnected(http: HttpRequest) -> None:
    """Return when the client hangs up (the body is already read, so only that can come)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


async def run(st: ServerState, request: Request, http: HttpRequest, source=None,
              model: str | None = None) -> Job:
    """Submit and wait for the job to end; raise the ApiError its failure maps to.
    ``source`` carries the img2img pixels the request names by hash."""
    submitting = asyncio.ensure_future(queue(st, request, source, model))
    try:
        job = await asyncio.shield(submitting)
    except asyncio.CancelledError:  # stopped while the job was being queued: cancel it then
        submitting.add_done_callback(_cancel_queued(st))
        raise
    return await wait(st, job, _disconnected(http))


async def wait(st: ServerState, job: Job, gone: Awaitable | None = None) -> Job:
    """Wait for a submitted job to end; raise the ApiError its failure maps to. ``gone``
    returns when the client hangs up (the job is then cancelled); a caller cancelled meanwhile
    (a front end's own cancel) cancels the job too."""
    ended = asyncio.ensure_future(job.ended.wait())
    left = asyncio.ensure_future(gone if gone is not None else asyncio.Event().wait())
    # the worker enforces the timeout at each step; this bound only guards a hung device
    limit = st.settings.request_timeout_s + HUNG_MARGIN_S
    try:
        await asyncio.wait({ended, left}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping this request, or the client
        st.jobs.cancel(job.id, "the request was cancelled")
        raise
    finally:
        for task in (ended, left):
            task.cancel()
    if not job.ended.is_set():
        if left.done() and not left.cancelled():
            st.jobs.cancel(job.id, "the client disconnected")
            raise ApiError(499, "client disconnected")
        st.jobs.cancel(job.id, "timed out waiting for the device")
        raise ApiError(504, f"no answer from the device within {limit:g} s", "timeout")
    return outcome(job)


def outcome(job: Job) -> Job:
    """A finished job, or the ApiError its failure maps to."""
    if job.status == "done":
        return job
    if job.status == "cancelled":
        raise ApiError(409, f"job {job.id} was cancelled: {job.error}", "cancelled")
    if job.timed_out:
        raise ApiError(504, job.error or "timed out", "timeout")
    if job.device_lost:
        raise ApiError(503, job.error or "the device went away: retry", "unavailable")
    if job.bad_input:
        raise ApiError(400, job.error or "bad request")
    raise ApiError(500, job.error or "generation failed", "server_error")
