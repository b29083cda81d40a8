"""Lab sweeps as background jobs on the server's engine.

A sweep runs in a lab thread, frame by frame, through ``zturbo.lab.run`` and so through
``generate()``, which holds ``engine.lock`` for each frame: frames and the job queue's
generations take turns on the device, one at a time, and an ordinary job waits at most one
frame. Sweeps run one after another (``_one_at_a_time``). State changes under ``_lock``;
events reach the event loop with ``call_soon_threadsafe``, in the shape ``jobs.follow``
reads, so the SSE stream is the same code as the job stream's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from zturbo.errors import ZTurboError
from zturbo.generation.orchestrator import Cancelled
from zturbo.lab.grid import grid_json
from zturbo.lab.runner import run
from zturbo.lab.runs import RunFolder
from zturbo.lab.spec import SweepSpec

log = logging.getLogger("zturbo.server")
KEEP = 64


@dataclass(eq=False)
class LabJob:
    id: str
    spec: SweepSpec
    folder: RunFolder
    total: int
    status: str = "queued"  # queued | running | done | error | cancelled
    done: int = 0
    skipped: int = 0
    error: str | None = None
    cancel_reason: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in ("done", "error", "cancelled")


class LabJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._one_at_a_time = threading.Lock()
        self._jobs: dict[str, LabJob] = {}
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, engine, settings, spec: SweepSpec, folder: RunFolder, total: int,
              loop: asyncio.AbstractEventLoop) -> LabJob:
        """Run ``spec`` into ``folder`` on ``engine`` in a lab thread; ``settings`` (the
        server's) validate every frame's Request, as for every other request."""
        job = LabJob(uuid.uuid4().hex, spec, folder, total)
        with self._lock:
            self._loop = loop
            self._jobs[job.id] = job
            ended = [j.id for j in self._jobs.values() if j.terminal]
            for old in ended[:max(0, len(self._jobs) - KEEP)]:  # oldest finished ones go
                self._jobs.pop(old)
            self._publish(job, "queued", {"total": total, "run": folder.name})
        thread = threading.Thread(target=self._work, args=(engine, settings, job), daemon=True,
                                  name=f"zturbo-lab-{job.id[:8]}")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def shutdown(self, grace_s: float) -> None:
        """Cancel every sweep not yet ended (each stops at its next step) and wait up to
        ``grace_s`` for the lab threads, so none is mid-frame when the engine closes."""
        with self._lock:
            for job in self._jobs.values():
                if not job.terminal:
                    job.cancel_reason = "the server is shutting down"
            threads = list(self._threads)
        deadline = time.monotonic() + grace_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def get(self, job_id: str) -> LabJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[LabJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job: LabJob, reason: str = "cancelled by the client") -> None:
        with self._lock:
            if not job.terminal:
                job.cancel_reason = reason

    def summary(self, job: LabJob) -> dict[str, Any]:
        with self._lock:
            return {"id": job.id, "status": job.status, "done": job.done, "total": job.total,
                    "skipped": job.skipped, "error": job.error, "run": job.folder.name,
                    "frames": list(job.frames), "report": _url(job, "report.html"),
                    "events": f"/api/lab/sweeps/{job.id}/events", "prompt": job.spec.prompt,
                    "grid": grid_json(job.spec.axes, job.frames)}

    # -- what jobs.follow reads ------------------------------------------------------
    def watch(self, job: LabJob, delta: int) -> None:
        """Nothing to count: lab events carry no previews."""

    def events_since(self, job: LabJob, index: int) -> list[dict[str, Any]]:
        with self._lock:
            return [{"event": e["event"], "data": dict(e["data"])} for e in job.events[index:]]

    # -- the lab thread ----------------------------------------------------------------
    def _work(self, engine, settings, job: LabJob) -> None:
        with self._one_at_a_time:
            if job.cancel_reason:  # cancelled while it waited for the sweep before it
                self._end(job, "cancelled", job.cancel_reason)
                return
            with self._lock:
                job.status = "running"
                self._publish(job, "started", {"total": job.total})
            try:
                outcome = run(job.spec, job.folder, engine=engine, settings=settings,
                              on_frame=lambda event: self._frame(job, event),
                              on_step=lambda *_: self._check(job))
            except Cancelled:
                self._end(job, "cancelled", job.cancel_reason or "cancelled")
                return
            except ZTurboError as exc:
                self._end(job, "error", str(exc))
                return
            except Exception as exc:  # a bug or the device failing: report it, keep serving
                log.exception("lab sweep %s failed", job.id)
                self._end(job, "error", f"sweep failed: {type(exc).__name__}: {exc}")
                return
            with self._lock:
                job.skipped = outcome.skipped
            self._end(job, "done", None)

    def _check(self, job: LabJob) -> None:
        if job.cancel_reason:
            raise Cancelled(job.cancel_reason)

    def _frame(self, job: LabJob, event: dict[str, Any]) -> None:
        self._check(job)
        frame = {"frame": event["frame"], "url": _url(job, event["file"]),
                 "skipped": event["skipped"], "coords": event["row"].get("coords", {})}
        with self._lock:
            job.done = event["done"]
            job.frames.append(frame)
            self._publish(job, "frame", {"done": job.done, "total": job.total, **frame})

    def _end(self, job: LabJob, status: str, error: str | None) -> None:
        with self._lock:
            job.status, job.error = status, error
            data = {"done": job.done, "total": job.total, "skipped": job.skipped,
                    "report": _url(job, "report.html"), "at": time.time()}
            if status == "error":
                data["message"] = error
            elif status == "cancelled":
                data["reason"] = error
            self._publish(job, status, data)

    def _publish(self, job: LabJob, event: str, data: dict[str, Any]) -> None:
        """Append an event (caller holds the lock) and wake the stream on the loop."""
        job.events.append({"event": event, "data": {"id": job.id, **data}})
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(job.changed.set)
            except RuntimeError:  # the loop closed meanwhile: no one is listening
                pass


def _url(job: LabJob, relative: str) -> str:
    return f"/api/lab/runs/{job.folder.name}/files/{relative}"
