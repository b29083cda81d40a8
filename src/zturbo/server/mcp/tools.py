"""What each tool does, on the app's own state: the same functions the HTTP routes call
(``make_request`` through ``request_from_body``, the job queue, the history, the lab), so
limits, back-pressure and messages are the HTTP API's.

A tool returns ``Answer``: content for the agent (images, resource links, the JSON) and
the JSON itself as structured content. Failures raise (ZTurboError, ApiError) and
``server.py`` turns them into tool errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from zturbo.server import sync
from zturbo.server.control import pixels_source
from zturbo.server.errors import ApiError
from zturbo.server.jobs import Job, JobQueue, follow
from zturbo.server.labjobs import LabJob, LabJobs
from zturbo.server.mcp.args import IMAGE_URI
from zturbo.server.metrics import cache_stats
from zturbo.server.routes.images import history_page, image_png, image_public
from zturbo.server.routes.jobs import cancel_job, find_job
from zturbo.server.routes.lab import app_lab_jobs, start
from zturbo.server.routes.library import lora_names
from zturbo.server.routes.ops import page_options, readiness, templates
from zturbo.server.schemas import request_from_body
from zturbo.server.state import ServerState
from zturbo.server.uploads import Upload, base64_bytes, decode_image

log = logging.getLogger("zturbo.server")
PNG = "image/png"
Progress = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class Call:
    """One tool call: the app (its state and sweeps), where links point, progress."""

    app: Any
    local: bool  # stdio: the client runs on this machine (file links); HTTP: URLs
    base_url: str | None = None  # HTTP: the server's address as the client reached it
    progress: Progress | None = None

    @property
    def st(self) -> ServerState:
        return self.app.state.zturbo

    async def report(self, done: float, total: float | None, message: str) -> None:
        """A progress notification; a client that stopped listening never fails the call."""
        if self.progress is None:
            return
        try:
            await self.progress(done, total, message)
        except Exception as exc:
            log.debug("mcp: progress not sent: %s", exc)

    def url(self, path: str) -> str:
        """An HTTP path of this server as an absolute URL (public_url when configured)."""
        base = self.st.settings.public_url or self.base_url or ""
        return base.rstrip("/") + path


@dataclass
class Answer:
    """A tool's result: content blocks and the JSON (also sent as text)."""

    data: dict[str, Any]
    blocks: list[Any] = field(default_factory=list)

    def result(self) -> types.CallToolResult:
        text = types.TextContent(type="text", text=json.dumps(self.data, default=str))
        return types.CallToolResult(content=[*self.blocks, text], structured_content=self.data)


async def until_ready(st: ServerState) -> None:
    """Wait while the model loads (an agent's first call may come first); then the queue's
    own checks answer (a failed load, a stopped worker)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + st.settings.request_timeout_s
    while st.fingerprint is None and st.load_error is None and loop.time() < deadline:
        await asyncio.sleep(0.05)


# -- generate and edit -----------------------------------------------------------------
async def generate(call: Call, args) -> Answer:
    """Text to image: a job like POST /api/jobs, awaited, with progress."""
    st = call.st
    await until_ready(st)
    control = await _pixels(call, args.control_image, "control_image") \
        if args.control_image is not None else None
    source, hashes, size = await pixels_source(st, control=control.image if control else None)
    request = await asyncio.to_thread(request_from_body, st.pool.settings_of(args.model), args,
                                      extra=hashes, defaults=size)
    return await _run(call, request, source, args.model)


async def edit(call: Call, args) -> Answer:
    """img2img (inpaint with a mask) from base64 pixels or an image of ours."""
    st = call.st
    await until_ready(st)
    image = await _pixels(call, args.image, "image")
    mask = await _pixels(call, args.mask, "mask") if args.mask is not None else None
    control = await _pixels(call, args.control_image, "control_image") \
        if args.control_image is not None else None
    source, hashes, size = await pixels_source(
        st, image.image, mask.image if mask else None, control.image if control else None)
    request = await asyncio.to_thread(request_from_body, st.pool.settings_of(args.model), args,
                                      extra=hashes, defaults=size)
    return await _run(call, request, source, args.model)


async def _pixels(call: Call, value: str, name: str) -> Upload:
    """An image argument: ``zturbo://images/<id>`` or base64 (a data: URL too), checked
    like an upload (bytes, header, pixels)."""
    st = call.st
    if value.startswith(IMAGE_URI):
        data = await asyncio.to_thread(image_png, st, value[len(IMAGE_URI):])
    else:
        data = base64_bytes(value, name, st.settings, f" nor {IMAGE_URI}<id>")
    return await asyncio.to_thread(decode_image, data, name, st.settings)


async def _run(call: Call, request, source=None, model: str | None = None) -> Answer:
    st = call.st
    job = await sync.queue(st, request, source, model)  # its history write waits off the loop
    reporter = asyncio.ensure_future(_job_progress(call, st.jobs, job))
    try:
        job = await sync.wait(st, job)
    finally:
        reporter.cancel()
    return await asyncio.to_thread(_images, call, job)


async def _job_progress(call: Call, queue: JobQueue, job: Job) -> None:
    """The job's events as MCP progress: its place in the queue, then step N of M."""
    async for event in follow(queue, job, previews=False):
        data = event["data"]
        if event["event"] == "queued":
            await call.report(0, job.total, f"queued at position {data['position']} "
                                            f"(job {job.id})")
        elif event["event"] == "step":
            await call.report(data["step"], data["total"],
                              f"step {data['step']} of {data['total']} (job {job.id})")


def _images(call: Call, job: Job) -> Answer:
    """A finished job: each image as image content and a resource link; the JSON holds its
    parameters (``request``), seed and replay kind (``served``)."""
    st, blocks, images = call.st, [], []
    for image in job.images:
        png = image_png(st, image["id"])
        blocks += [types.ImageContent(type="image", data=base64.b64encode(png).decode(),
                                      mime_type=PNG), _link(image["id"], image["seed"])]
        images.append(_described(call, image))
    return Answer({"job_id": job.id, "images": images, "timings": job.timings,
                   "warnings": job.warnings}, blocks)


def _described(call: Call, image: dict[str, Any]) -> dict[str, Any]:
    """An image's JSON with its resource URI, its URL (HTTP) or file (stdio), and how it
    was made (``served``: image, final_latent, resume or full)."""
    out = {**image, "uri": IMAGE_URI + image["id"],
           "served": str((image.get("teleport") or {}).get("served", "full"))}
    if call.local:
        path = call.st.history.image_file(image["id"])  # None: not on disk (gone, or Redis)
        out["file"] = str(path) if path is not None else None
        out.pop("url", None)
    else:
        out["url"] = call.url(image["url"])
    return out


def _link(image_id: str, seed: int | None = None) -> types.ResourceLink:
    return types.ResourceLink(type="resource_link", uri=IMAGE_URI + image_id,
                              name=f"{image_id}.png", mime_type=PNG,
                              description=f"seed {seed}" if seed is not None else None)


# -- history -----------------------------------------------------------------------------
async def list_images(call: Call, args) -> Answer:
    """A page of the history, newest first, searched by prompt."""
    page = await asyncio.to_thread(history_page, call.st, args.query, args.limit, args.offset)
    items = [_described(call, item) for item in page["items"]]
    return Answer({**page, "items": items}, [_link(i["id"], i["seed"]) for i in items])


async def get_image(call: Call, args) -> Answer:
    """One image: its pixels, link and history row."""
    image_id = args.id.removeprefix(IMAGE_URI)
    row = await asyncio.to_thread(image_public, call.st, image_id)
    png = await asyncio.to_thread(image_png, call.st, image_id)
    return Answer(_described(call, row), [
        types.ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type=PNG),
        _link(image_id, row.get("seed"))])


# -- jobs and sweeps ---------------------------------------------------------------------
async def cancel(call: Call, args) -> Answer:
    """Cancel a job (queued: at once; running: at its next step) or a sweep."""
    lab = app_lab_jobs(call.app)
    sweep = lab.get(args.id)
    if sweep is not None:
        lab.cancel(sweep)
        return Answer(lab.summary(sweep))
    return Answer(await cancel_job(call.st, find_job(call.st, args.id)))


async def sweep(call: Call, args) -> Answer:
    """A lab sweep (the HTTP route's checks and limits), awaited with a progress
    notification per frame; its report as a link."""
    st = call.st
    await until_ready(st)
    lab = app_lab_jobs(call.app)
    job = await start(st, lab, args)
    try:
        await _sweep_progress(call, lab, job)
    except asyncio.CancelledError:
        lab.cancel(job, "the request was cancelled")
        raise
    summary = lab.summary(job)
    if summary["status"] == "cancelled":
        raise ApiError(409, f"sweep {job.id} was cancelled", "cancelled")
    if summary["status"] == "error":
        raise ApiError(400, summary["error"] or "the sweep failed")
    return _report(call, job, summary)


async def _sweep_progress(call: Call, lab: LabJobs, job: LabJob) -> None:
    async for event in follow(lab, job):
        if event["event"] == "frame":
            data = event["data"]
            await call.report(data["done"], data["total"],
                              f"frame {data['done']} of {data['total']} (sweep {job.id})")


def _report(call: Call, job: LabJob, summary: dict[str, Any]) -> Answer:
    """The sweep's summary with its report: a file (stdio) or the URL (HTTP)."""
    if call.local:
        uri = job.folder.file("report.html").resolve().as_uri()
        summary = {**summary, "report_file": str(job.folder.file("report.html"))}
    else:
        uri = call.url(summary["report"])
        summary = {**summary, "report": uri}
    link = types.ResourceLink(type="resource_link", uri=uri, name=f"{job.folder.name} report",
                              mime_type="text/html")
    return Answer(summary, [link] if "://" in uri else [])


# -- about the server --------------------------------------------------------------------
async def models(call: Call, args) -> Answer:
    """The model this server runs (one per server), its LoRAs and prompt templates."""
    st = call.st
    await until_ready(st)
    ready = readiness(st)
    loras = await asyncio.to_thread(lora_names, st.settings)
    return Answer({"model": ready.get("model") or st.settings.model,
                   "fingerprint": ready.get("fingerprint"), "ready": ready["ready"],
                   "loras": loras, "templates": templates(st.settings)})


async def info(call: Call, args) -> Answer:
    """Readiness, the queue (job ids to cancel), defaults and limits, cache counters."""
    st = call.st
    return Answer({"ready": readiness(st), "queue": [_queued(st, job) for job in st.jobs.active()],
                   "sweeps": [{k: v for k, v in app_lab_jobs(call.app).summary(j).items()
                               if k != "frames"} for j in app_lab_jobs(call.app).all()],
                   "options": page_options(st.settings), "caches": cache_stats(st.engine)})


def _queued(st: ServerState, job: Job) -> dict[str, Any]:
    summary = st.jobs.summary(job)
    return {k: summary[k] for k in ("id", "status", "queue_position", "step", "total")} | {
        "prompt": job.request.prompt}
