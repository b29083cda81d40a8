"""The lab over HTTP: start a sweep as a background job, follow it (SSE), list run folders,
serve a run's report and frames (never a path outside the run folder), and the Lab page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field

from zturbo.errors import ZTurboError
from zturbo.lab.axes import ENGINE_AXES, sweepable
from zturbo.lab.runner import build_spec, default_folder, plan
from zturbo.lab.runs import list_runs, run_file, runs_root
from zturbo.lab.spec import presets, reference_prompts
from zturbo.server.errors import ApiError
from zturbo.server.jobs import follow
from zturbo.server.labjobs import LabJob, LabJobs
from zturbo.server.state import ServerState, state

router = APIRouter(tags=["lab"])
MAX_FRAMES = 256


class SweepBody(BaseModel):
    """POST /api/lab/sweeps: like ``zturbo sweep``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="the prompt (or prompt_name)")
    prompt_name: str | None = Field(None, description="a named reference prompt, e.g. robot")
    vary: list[str] = Field(default_factory=list, description='axes like "steps=4,8"')
    preset: str | None = Field(None, description="steps, guidance, seeds, aspect, scale, quant")
    reference: str | None = Field(None, description="reference frame, e.g. steps=15")
    fixed: dict[str, Any] = Field(default_factory=dict, description="fixed Request fields")


def lab_jobs(request: Request) -> LabJobs:
    return app_lab_jobs(request.app)


def app_lab_jobs(app) -> LabJobs:
    """The app's sweeps (made on first use; the lifespan shuts them down)."""
    app_state = app.state
    if not hasattr(app_state, "zturbo_lab"):
        app_state.zturbo_lab = LabJobs()
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


@router.post("/api/lab/sweeps", status_code=202)
async def start_sweep(body: SweepBody, request: Request):
    """Start a sweep on the server's engine; follow it at ``events``; its report at ``report``."""
    job = start(state(request), lab_jobs(request), body)
    return lab_jobs(request).summary(job)


def start(st: ServerState, jobs: LabJobs, body: SweepBody) -> LabJob:
    """Check a sweep (the server's limits) and start it on the server's engine."""
    if st.engine is None:
        raise ApiError(503, "the model is still loading; see /api/ready", "unavailable")
    prompt, name = body.prompt, body.prompt_name
    if name or (body.preset and not prompt):  # a preset's prompt is "robot" by default
        prompt = reference_prompts().get(name or "robot")
        if prompt is None:
            raise ApiError(400, f"unknown prompt_name {name!r}")
    if not prompt or not prompt.strip():
        raise ApiError(400, "no prompt: give prompt or prompt_name")
    if not body.vary and not body.preset:
        raise ApiError(400, "nothing to sweep: give vary or preset")
    if "transformer_file" in body.fixed or any(v.startswith("transformer_file") for v in body.vary):
        raise ApiError(400, "the server's engine has one transformer: sweep weights from the CLI")
    try:
        spec = build_spec(prompt.strip(), body.vary, preset=body.preset, reference=body.reference,
                          model=st.engine.spec, **body.fixed)
        frames = plan(spec, st.settings)
    except ZTurboError as exc:
        raise ApiError(400, str(exc)) from None
    if len(frames) > MAX_FRAMES:
        raise ApiError(400, f"{len(frames)} frames: a server sweep has at most {MAX_FRAMES}")
    return jobs.start(st.engine, st.settings, spec, default_folder(spec), len(frames),
                      asyncio.get_running_loop())


@router.get("/api/lab/sweeps")
async def sweeps(request: Request):
    """The sweeps this server started, oldest first."""
    jobs = lab_jobs(request)
    return {"sweeps": [jobs.summary(j) for j in jobs.all()]}


@router.get("/api/lab/sweeps/{sweep_id}")
async def sweep_status(sweep_id: str, request: Request):
    return lab_jobs(request).summary(_job(request, sweep_id))


@router.get("/api/lab/sweeps/{sweep_id}/events", response_class=EventSourceResponse)
async def sweep_events(request: Request, job: LabJob = Depends(sweep_job)
                       ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events from the start: ``queued``, ``started``, one ``frame`` per frame
    (``done``/``total``, its URL, whether it was skipped as already done), then ``done``,
    ``error`` or ``cancelled``."""
    async for event in follow(lab_jobs(request), job):
        yield ServerSentEvent(event=event["event"], data=event["data"])


@router.post("/api/lab/sweeps/{sweep_id}/cancel")
async def cancel_sweep(sweep_id: str, request: Request):
    """Cancel a sweep at its next step; finished frames stay in its run folder."""
    job = _job(request, sweep_id)
    lab_jobs(request).cancel(job)
    return lab_jobs(request).summary(job)


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
    """A file of a run folder (report.html, frames/*.png, results.jsonl...)."""
    try:
        return FileResponse(run_file(runs_root(), run, relative))
    except ZTurboError as exc:
        raise ApiError(404, str(exc), "not_found") from None


@router.get("/lab", include_in_schema=False)
async def lab_page():
    return FileResponse(str(files("zturbo").joinpath("static", "lab.html")),
                        media_type="text/html")

