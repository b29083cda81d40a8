"""The lab over HTTP: start a sweep as a background job, follow it (SSE), resume one the
server was stopped in, list run folders, serve a run's report and frames (never a path
outside the runs folder, always under a strict Content-Security-Policy), and the Lab page.

A sweep body is parsed and counted off the event loop, before any frame's Request is built:
at most ``MAX_FRAMES`` frames (and the lab's caps on values per axis and axes); every parse
error is a 400, a full lab queue a 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field

from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError
from zturbo.lab.axes import ENGINE_AXES, MAX_AXES, sweepable, vary_field
from zturbo.lab.report import script_hash
from zturbo.lab.runner import build_spec, default_folder, plan, sweep_source
from zturbo.lab.runs import REPORT, RunFolder, list_runs, run_file, runs_root
from zturbo.lab.spec import SweepSpec, presets, reference_prompts
from zturbo.server.errors import ApiError
from zturbo.server.jobs import follow
from zturbo.server.labjobs import (
    RESUMABLE,
    LabJob,
    LabJobs,
    SweepBusy,
    public_message,
    records_dir,
)
from zturbo.server.state import ServerState, state

router = APIRouter(tags=["lab"])
MAX_FRAMES = 256
MAX_VARY_CHARS = 4000
MAX_FIXED = 64
# Run files are data: nothing in them may run or load anything. report.html may run its own
# inline script only (by hash), sandboxed in an origin of its own, and show the run's frames.
FILE_CSP = "default-src 'none'; sandbox"
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def report_csp() -> str:
    return (f"default-src 'none'; script-src {script_hash()}; style-src 'unsafe-inline'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
            "sandbox allow-scripts")


class SweepBody(BaseModel):
    """POST /api/lab/sweeps: like ``zturbo sweep``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="the prompt (or prompt_name)")
    prompt_name: str | None = Field(None, max_length=64,
                                    description="a named reference prompt, e.g. robot")
    vary: list[Annotated[str, Field(max_length=MAX_VARY_CHARS,
                                    json_schema_extra={"format": "sweep-axis"})]] = Field(
        default_factory=list, max_length=MAX_AXES,
        description='axes like "steps=4,8" or "seed=1..8" (format sweep-axis: FIELD=v1,v2,...)')
    preset: str | None = Field(None, max_length=64,
                               description="steps, guidance, seeds, aspect, scale, quant")
    reference: str | None = Field(None, max_length=1000,
                                  description="reference frame, e.g. steps=15")
    fixed: dict[str, Any] = Field(default_factory=dict, max_length=MAX_FIXED,
                                  description="fixed Request fields (width, steps, seed...)")


def lab_jobs(request: Request) -> LabJobs:
    return app_lab_jobs(request.app)


def app_lab_jobs(app) -> LabJobs:
    """The app's sweeps (made on first use; the lifespan shuts them down)."""
    app_state = app.state
    if not hasattr(app_state, "zturbo_lab"):
        app_state.zturbo_lab = LabJobs(records_dir())
    return app_state.zturbo_lab


def _job(request: Request, sweep_id: str) -> LabJob:
    job = lab_jobs(request).get(sweep_id)
    if job is None:
        raise ApiError(404, f"no sweep {sweep_id!r}", "not_found")
    return job


def sweep_job(sweep_id: str, request: Request) -> LabJob:
    """The sweep, as a dependency: an unknown id is a 404 before an event stream starts
    (raised inside the stream it would be a 500)."""
    return _job(request, sweep_id)


def _spec(body: SweepBody, model: str) -> SweepSpec:
    """The body as a SweepSpec (parsed, counted, not yet planned)."""
    prompt, name = body.prompt, body.prompt_name
    if name or (body.preset and not prompt):  # a preset's prompt is "robot" by default
        prompt = reference_prompts().get(name or "robot")
        if prompt is None:
            raise ZTurboError(f"unknown prompt_name {name!r}")
    if not prompt or not prompt.strip():
        raise ZTurboError("no prompt: give prompt or prompt_name")
    if not body.vary and not body.preset:
        raise ZTurboError("nothing to sweep: give vary or preset")
    if "transformer_file" in body.fixed or any(vary_field(v) in ENGINE_AXES for v in body.vary):
        raise ZTurboError("the server's engine has one transformer: sweep weights from the CLI")
    return build_spec(prompt.strip(), body.vary, preset=body.preset, reference=body.reference,
                      model=model, fixed=body.fixed, max_frames=MAX_FRAMES)


async def _planned(st: ServerState, make) -> tuple[Any, SweepSpec, RunFolder, int]:
    """``make()`` (a SweepSpec) planned in a thread, off the event loop: the engine, the
    spec, its default run folder and its frame count; every refusal a 400."""
    engine = st.engine
    if engine is None:
        raise ApiError(503, "the model is still loading; see /api/ready", "unavailable")

    def work() -> tuple[SweepSpec, int]:
        spec = make(engine)
        sweep_source(spec)  # its control image (if any) must be in the input store
        return spec, len(plan(spec, st.settings, MAX_FRAMES))

    try:
        spec, total = await asyncio.to_thread(work)
    except ZTurboError as exc:
        raise ApiError(400, public_message(str(exc))) from None
    return engine, spec, default_folder(spec, st.settings), total


def _queue(st: ServerState, jobs: LabJobs, engine: Engine, spec: SweepSpec, folder: RunFolder,
           total: int, job_id: str | None = None) -> LabJob:
    """Hand the sweep to the lab worker (a full lab queue is a 429 with Retry-After, from
    the app's QueueFull handler)."""
    try:
        return jobs.start(engine, st.settings, spec, folder, total,
                          asyncio.get_running_loop(), job_id)
    except SweepBusy as exc:
        raise ApiError(409, str(exc), "conflict") from None


async def start(st: ServerState, jobs: LabJobs, body: SweepBody) -> LabJob:
    """Check a sweep (the server's limits), plan it off the event loop and queue it on the
    server's engine (the HTTP route and the MCP sweep tool)."""
    engine, spec, folder, total = await _planned(st, lambda eng: _spec(body, eng.spec))
    return _queue(st, jobs, engine, spec, folder, total)


@router.post("/api/lab/sweeps", status_code=202)
async def start_sweep(body: SweepBody, request: Request):
    """Start a sweep on the server's engine; follow it at ``events``; its report at
    ``report``. 400 for any refused value (or over 256 frames), 429 when the lab queue is
    full."""
    jobs = lab_jobs(request)
    return jobs.summary(await start(state(request), jobs, body))


@router.get("/api/lab/sweeps")
async def sweeps(request: Request):
    """The sweeps this server started (and those recorded before a restart), oldest first."""
    jobs = lab_jobs(request)
    return {"sweeps": [jobs.summary(j) for j in jobs.all()]}


@router.get("/api/lab/sweeps/{sweep_id}")
async def sweep_status(sweep_id: str, request: Request):
    """A sweep's state: queued, running, done, error, cancelled, or interrupted (the server
    stopped while it was queued or running: resume it)."""
    return lab_jobs(request).summary(_job(request, sweep_id))


@router.get("/api/lab/sweeps/{sweep_id}/events", response_class=EventSourceResponse)
async def sweep_events(request: Request, job: LabJob = Depends(sweep_job)
                       ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events from the start: ``queued``, ``started``, one ``frame`` per frame
    (``done``/``total``, its URL, whether it was skipped as already done), then ``done``,
    ``error``, ``cancelled`` or ``interrupted``."""
    async for event in follow(lab_jobs(request), job):
        yield ServerSentEvent(event=event["event"], data=event["data"])


@router.post("/api/lab/sweeps/{sweep_id}/cancel")
async def cancel_sweep(sweep_id: str, request: Request):
    """Cancel a sweep at its next step; finished frames stay in its run folder."""
    job = _job(request, sweep_id)
    lab_jobs(request).cancel(job)
    return lab_jobs(request).summary(job)


@router.post("/api/lab/sweeps/{sweep_id}/resume", status_code=202)
async def resume_sweep(sweep_id: str, request: Request):
    """Run an interrupted, cancelled or failed sweep again under its id, into its run
    folder: the frames already made are skipped. 409 while it is queued, running or done."""
    job = _job(request, sweep_id)
    if job.status not in RESUMABLE:
        raise ApiError(409, f"sweep {sweep_id!r} is {job.status}: only an interrupted, "
                       "cancelled or failed sweep resumes", "conflict")
    st, jobs = state(request), lab_jobs(request)
    engine, spec, _, total = await _planned(st, lambda eng: job.spec)
    return jobs.summary(_queue(st, jobs, engine, spec, job.folder, total, job.id))


@router.get("/api/lab/runs")
def runs(request: Request):
    """Run folders under ``<state>/runs``, newest first (a run a sweep of this server is
    making is ``running``), with what the Lab page's form offers: the sweepable fields and
    the presets a server runs (none that loads weights files)."""
    busy = {j.folder.name for j in lab_jobs(request).all() if not j.terminal}
    return {"runs": [{k: v for k, v in r.items() if k != "path"}
                     | {"report": f"/api/lab/runs/{r['name']}/files/report.html"
                        if r["report"] else None}
                     | ({"state": "running"} if r["name"] in busy else {})
                     for r in list_runs(runs_root())],
            "sweepable": [f for f in sweepable() if f not in ENGINE_AXES],
            "presets": {name: p.get("help", "") for name, p in presets().items()
                        if not any(v.startswith(ENGINE_AXES) for v in p.get("vary", []))}}


@router.get("/api/lab/runs/{run}/files/{relative:path}", response_class=FileResponse)
async def run_files(run: str, relative: str):
    """A file of a run folder (report.html, frames/*.png, results.jsonl...), never one
    outside the runs folder (no traversal, no symlink out), with a Content-Security-Policy:
    report.html runs only its own script, sandboxed; other files run nothing."""
    try:
        path = run_file(runs_root(), run, relative)
    except ZTurboError as exc:
        raise ApiError(404, str(exc), "not_found") from None
    csp = report_csp() if relative == REPORT else FILE_CSP
    return FileResponse(path, headers={"Content-Security-Policy": csp, **NOSNIFF})


@router.get("/lab", include_in_schema=False)
async def lab_page():
    return FileResponse(str(files("zturbo").joinpath("static", "lab.html")),
                        media_type="text/html")
