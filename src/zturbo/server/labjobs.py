"""Lab sweeps as background jobs on the server's engine.

One lab worker thread runs the sweeps one after another, frame by frame, through
``zturbo.lab.run`` and so through ``generate()``, which holds ``engine.lock`` for each frame:
frames and the job queue's generations take turns on the device, one at a time, and an
ordinary job waits at most one frame. At most ``max_queued`` sweeps wait behind the running
one (``start`` raises LabQueueFull beyond: a 429). State changes under ``_lock``; events
reach the event loop with ``call_soon_threadsafe``, in the shape ``jobs.follow`` reads, so
the SSE stream is the same code as the job stream's.

Each sweep's state is also a small JSON record in ``<state>/server/sweeps/``: after a crash
or a kill the next server start (holding the state dir's lock) marks a sweep that was
queued or running ``interrupted``; ``resume`` runs it again into its run folder, where the
frames already made are skipped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError
from zturbo.generation.orchestrator import Cancelled
from zturbo.lab.grid import grid_json
from zturbo.lab.runner import run
from zturbo.lab.runs import RUN_NAME, RunFolder, runs_root, write_text_atomic
from zturbo.lab.spec import SweepSpec
from zturbo.paths import state_dir
from zturbo.server.jobs import NotAccepting, QueueFull

log = logging.getLogger("zturbo.server")
KEEP = 64  # finished sweeps kept (in memory and as records)
MAX_QUEUED = 4  # sweeps waiting behind the running one
RETRY_QUEUED_S = 30  # Retry-After of a full lab queue
TERMINAL = ("done", "error", "cancelled", "interrupted")
RESUMABLE = ("error", "cancelled", "interrupted")


class SweepBusy(ZTurboError):
    """The sweep to resume is queued or running again already."""


def records_dir() -> Path:
    """Where the sweeps' records are kept: ``<state>/server/sweeps``."""
    return state_dir() / "server" / "sweeps"


@dataclass(eq=False)
class LabJob:
    id: str
    spec: SweepSpec
    folder: RunFolder
    total: int
    status: str = "queued"  # queued | running | done | error | cancelled | interrupted
    done: int = 0
    skipped: int = 0
    error: str | None = None
    cancel_reason: str | None = None
    created: float = field(default_factory=time.time)
    frames: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.folder.name, "status": self.status,
                "total": self.total, "done": self.done, "skipped": self.skipped,
                "error": self.error, "created": self.created, "spec": self.spec.to_dict()}


class LabJobs:
    def __init__(self, records: Path | None = None, max_queued: int = MAX_QUEUED) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, LabJob] = {}
        self._pending: collections.deque[tuple[Any, Any, LabJob]] = collections.deque()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.records, self.max_queued = records, max_queued
        jobs = _load_records(records)
        for job in jobs[:-KEEP]:  # the oldest beyond KEEP: their records go
            self._forget(job.id)
        self._jobs = {job.id: job for job in jobs[-KEEP:]}

    def start(self, engine: Engine, settings, spec: SweepSpec, folder: RunFolder, total: int,
              loop: asyncio.AbstractEventLoop, job_id: str | None = None) -> LabJob:
        """Queue ``spec`` into ``folder`` for the lab worker; ``settings`` (the server's)
        validate every frame's Request, as for every other request. ``job_id``: resume that
        (ended) sweep under its id. Raises QueueFull (a 429 with Retry-After) when
        ``max_queued`` sweeps wait, NotAccepting (503) while the server shuts down, SweepBusy
        when the sweep to resume is not ended."""
        job = LabJob(job_id or uuid.uuid4().hex, spec, folder, total)
        with self._lock:
            if self._stopping:
                raise NotAccepting("the server is shutting down")
            if job_id is not None and not self._jobs[job_id].terminal:
                raise SweepBusy(f"sweep {job_id!r} is {self._jobs[job_id].status} already")
            if sum(1 for j in self._jobs.values() if j.status == "queued") >= self.max_queued:
                raise QueueFull(f"{self.max_queued} sweeps are waiting already: try again "
                                "when one has started", RETRY_QUEUED_S)
            self._loop = loop
            self._jobs.pop(job.id, None)
            self._jobs[job.id] = job
            ended = [j.id for j in self._jobs.values() if j.terminal]
            for old in ended[:max(0, len(self._jobs) - KEEP)]:  # oldest finished ones go
                self._jobs.pop(old)
                self._forget(old)
            self._publish(job, "queued", {"total": total, "run": folder.name})
            self._pending.append((engine, settings, job))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, daemon=True,
                                                name="zturbo-lab")
                self._worker.start()
            self._wake.notify()
        return job

    def interrupt_unfinished(self) -> int:
        """Mark sweeps a stopped server left queued or running ``interrupted`` (call it
        only while holding the state dir's lock: no other server runs them)."""
        with self._lock:
            lost = [j for j in self._jobs.values()
                    if not j.terminal and all(j is not p[2] for p in self._pending)]
            for job in lost:
                job.status = "interrupted"
                job.error = "the server stopped before the sweep finished: resume it"
                self._publish(job, "interrupted", {"done": job.done, "total": job.total,
                                                   "message": job.error, "at": time.time()})
            return len(lost)

    def shutdown(self, grace_s: float) -> None:
        """Cancel every sweep not yet ended (each stops at its next step) and wait up to
        ``grace_s`` for the lab worker, so none is mid-frame when the engine closes."""
        reason = "the server is shutting down"
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                if not job.terminal:
                    job.cancel_reason = reason
                if job.status == "queued":  # never started: ends now
                    self._finish(job, "cancelled", reason)
            self._pending.clear()
            worker = self._worker
            self._wake.notify_all()
        if worker is not None:
            worker.join(grace_s)

    @property
    def _threads(self) -> list[threading.Thread]:
        """The lab's threads (one worker at most)."""
        return [self._worker] if self._worker is not None else []

    def get(self, job_id: str) -> LabJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[LabJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job: LabJob, reason: str = "cancelled by the client") -> None:
        """A queued sweep ends now (its place in the queue is free again); a running one
        stops at its next step."""
        with self._lock:
            if job.terminal:
                return
            job.cancel_reason = reason
            if job.status == "queued":
                self._pending = collections.deque(p for p in self._pending if p[2] is not job)
                self._finish(job, "cancelled", reason)

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

    # -- the lab worker ----------------------------------------------------------------
    def _serve(self) -> None:
        """The lab worker: the queued sweeps, one after another, until shutdown."""
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                engine, settings, job = self._pending.popleft()
            self._work(engine, settings, job)

    def _work(self, engine: Engine, settings, job: LabJob) -> None:
        with self._lock:
            if job.terminal:  # cancelled while it waited for the sweep before it
                return
            if job.cancel_reason:  # the server is shutting down
                self._finish(job, "cancelled", job.cancel_reason)
                return
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
            self._end(job, "error", public_message(str(exc)))
            return
        except Exception as exc:  # a bug, the disk or the device failing: report it, keep serving
            log.exception("lab sweep %s failed", job.id)
            self._end(job, "error", public_message(f"sweep failed: {type(exc).__name__}: {exc}"))
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
            job.skipped += int(event["skipped"])
            job.frames.append(frame)
            self._publish(job, "frame", {"done": job.done, "total": job.total, **frame})

    def _end(self, job: LabJob, status: str, error: str | None) -> None:
        with self._lock:
            self._finish(job, status, error)

    def _finish(self, job: LabJob, status: str, error: str | None) -> None:
        """End the sweep (caller holds the lock)."""
        job.status, job.error = status, error
        data = {"done": job.done, "total": job.total, "skipped": job.skipped,
                "report": _url(job, "report.html"), "at": time.time()}
        if status == "error":
            data["message"] = error
        elif status == "cancelled":
            data["reason"] = error
        self._publish(job, status, data)

    def _publish(self, job: LabJob, event: str, data: dict[str, Any]) -> None:
        """Append an event, record the state (caller holds the lock) and wake the stream
        on the loop."""
        job.events.append({"event": event, "data": {"id": job.id, **data}})
        self._save(job)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(job.changed.set)
            except RuntimeError:  # the loop closed meanwhile: no one is listening
                pass

    # -- records ------------------------------------------------------------------------
    def _save(self, job: LabJob) -> None:
        if self.records is None:
            return
        try:
            write_text_atomic(self.records / f"{job.id}.json", json.dumps(job.record()))
        except OSError as exc:  # a full disk: the sweep goes on, its record is stale
            log.warning("lab: cannot write the record of sweep %s: %s", job.id,
                        public_message(str(exc)))

    def _forget(self, job_id: str) -> None:
        if self.records is not None:
            (self.records / f"{job_id}.json").unlink(missing_ok=True)


def _load_records(folder: Path | None) -> list[LabJob]:
    """The recorded sweeps, oldest first; unreadable ones skipped (and left alone)."""
    if folder is None or not folder.is_dir():
        return []
    jobs = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            jobs.append(_from_record(data))
        except (OSError, ValueError, KeyError, TypeError, ZTurboError) as exc:
            log.warning("lab: skipping the sweep record %s: %s", path.name, exc)
    return sorted(jobs, key=lambda j: j.created)


def _from_record(data: dict[str, Any]) -> LabJob:
    run_name, job_id = str(data["run"]), str(data["id"])
    if not RUN_NAME.fullmatch(run_name) or not RUN_NAME.fullmatch(job_id):
        raise ValueError("bad run name or id")
    job = LabJob(job_id, SweepSpec.from_dict(data["spec"]), RunFolder(runs_root() / run_name),
                 int(data["total"]), status=str(data["status"]), done=int(data["done"]),
                 skipped=int(data["skipped"]), error=data.get("error"),
                 created=float(data["created"]))
    job.events.append({"event": job.status if job.terminal else "queued",
                       "data": {"id": job.id, "done": job.done, "total": job.total,
                                "message": job.error}})
    return job


def public_message(message: str) -> str:
    """An error message as a client may see it: the state dir's path replaced by
    ``<state>`` (no absolute server path in an answer)."""
    for root in {str(state_dir().resolve()), str(state_dir())}:
        message = message.replace(root, "<state>")
    return message


def _url(job: LabJob, relative: str) -> str:
    return f"/api/lab/runs/{job.folder.name}/files/{relative}"
