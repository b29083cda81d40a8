"""The job queue: one worker thread owns the device and runs jobs one at a time.

The event loop never runs a generation: HTTP handlers submit a ``Job`` and await its
events. Job state is changed only under ``JobQueue._lock``; events cross from the worker
thread to the event loop with ``call_soon_threadsafe``.

Batch size is 1 on purpose: every image must equal its single-seed run exactly (the
replay rule), and a batch of two differs from two single runs by up to one uint8 level
on CPU, so compatible requests are queued, not merged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zturbo.config import Request
from zturbo.config.metadata import save_png
from zturbo.errors import ZTurboError
from zturbo.generation.orchestrator import Cancelled, Result, generate, steps_run
from zturbo.server.mirror import Mirror
from zturbo.server.preview import preview_data_url
from zturbo.server.store.history import TERMINAL, History
from zturbo.server.store.redis_store import RedisStore, StoreUnavailable

log = logging.getLogger("zturbo.server")
KEEP_FINISHED = 256  # finished jobs kept in memory for GET /api/jobs/{id}; older ones: history


class QueueFull(ZTurboError):
    """The queue holds ``queue_depth`` jobs already; the client should retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(ZTurboError):
    """The server is loading its model or shutting down."""


class DeviceLost(ZTurboError):
    """The device (a Ray generator replica) went away under the job: retrying may work."""


@dataclass(eq=False)  # a job is itself: the queue finds and removes it by identity
class Job:
    """One submitted Request and everything a client may ask about it."""

    id: str
    request: Request
    created: float
    deadline: float  # time.monotonic() after which the job times out
    status: str = "queued"  # queued | running | done | error | cancelled
    started: float | None = None
    finished: float | None = None
    step: int = 0
    error: str | None = None
    timed_out: bool = False
    bad_input: bool = False  # failed with a ZTurboError: the request, not the server
    device_lost: bool = False  # failed with DeviceLost: the client should retry (503)
    cancel_reason: str | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    teleport: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. adapted SLG layers (CLI shows them)
    events: list[dict[str, Any]] = field(default_factory=list)
    source: Any = None  # img2img pixels (zturbo.generation.img2img.Source) the request names by hash
    watchers: int = 0  # event-stream subscribers: previews are made only when someone looks
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def total(self) -> int:
        return steps_run(self.request) * self.request.num_images

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def image_url(image_id: str) -> str:
    return f"/api/images/{image_id}"


class JobQueue:
    """An in-process FIFO of jobs with admission control, cancel, timeouts and progress."""

    def __init__(self, settings, history: History | RedisStore | None, outputs: Path,
                 metrics=None, *, runner=generate, workers: int = 1) -> None:
        """``runner(engine, request, on_step=, source=)`` makes a Result (``generate``; the
        Ray app passes one that calls generator replicas); ``workers`` threads run jobs
        (one per local device; as many as the replicas behind a Ray ingress)."""
        self.engine = None  # set by start()
        self.runner = runner
        self.workers = workers
        self.settings = settings
        self.history = history
        self.outputs = outputs
        self.metrics = metrics
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._running: list[Job] = []
        self._accepting = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._mean_run_s = 1.0
        # history writes that failed (disk full, database locked), retried by the worker
        self._unwritten: collections.deque[tuple[str, str, dict[str, Any]]] = collections.deque()
        self.worker_error: str | None = None  # why the worker thread ended, if it did
        self._mirror: Mirror | None = None  # copies events to a shared store (redis backend)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, engine, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker with a loaded engine; events are delivered on ``loop``."""
        self.engine = engine
        self._loop = loop
        if self.history.shared:
            self._mirror = Mirror(self.history, self._active_ids, self.cancel)
            self._mirror.start()
        self._accepting = True
        self._threads = [threading.Thread(target=self._worker, name=f"zturbo-worker-{i}",
                                          daemon=True) for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def shutdown(self, grace_s: float) -> None:
        """Stop accepting, cancel what waits, let the running job finish within ``grace_s``
        (then cancel it at its next step), and leave no job unfinished in the history."""
        with self._lock:
            self._accepting = False
            waiting = list(self._queue)
            self._queue.clear()
            for job in waiting:
                self._finish(job, "cancelled", error="the server is shutting down")
            running = list(self._running)
        if running and not self._wait_idle(grace_s):
            for job in running:
                self.cancel(job.id, "the server is shutting down")
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=max(grace_s, 1.0) + 60.0)
        with self._lock:
            self._retry_history()
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
        try:
            self.history.interrupt_unfinished("the server shut down before it finished")
        except StoreUnavailable as exc:  # its lease expires: another ingress ends its jobs
            log.warning("shared state: cannot close this ingress's jobs: %s", exc)

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    # -- submit / query / cancel ---------------------------------------------------------
    def submit(self, request: Request, source: Any = None) -> Job:
        """Queue a request, or raise QueueFull (-> 429) / NotAccepting (-> 503)."""
        now = time.time()
        job = Job(id=uuid.uuid4().hex, request=request, created=now,
                  deadline=time.monotonic() + self.settings.request_timeout_s, source=source)
        with self._lock:
            if not self._accepting:
                raise NotAccepting(self.worker_down() or
                                   "the server is not accepting jobs (loading or shutting down)")
            if len(self._queue) >= self.settings.queue_depth:
                retry = self._retry_after()
                raise QueueFull(f"the queue is full ({self.settings.queue_depth} jobs waiting); "
                                f"retry in {retry} s", retry)
            self.history.add_job(job.id, request.model_dump(mode="json"), now)
            self._queue.append(job)
            self._jobs[job.id] = job
            self._publish(job, "queued", {"position": len(self._queue)})
            self._wake.notify_all()
        self._gauges()
        return job

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._mean_run_s * (len(self._queue) + 1)))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def active(self) -> list[Job]:
        """The running job, then the queued ones in order."""
        with self._lock:
            return list(self._running) + list(self._queue)

    def _active_ids(self) -> list[str]:
        with self._lock:
            return [job.id for job in self._running] + [job.id for job in self._queue]

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> Job | None:
        """Cancel a queued job now, or a running one at its next step (None: unknown id)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.terminal:
                return job
            if job.status == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled", error=reason)
                self._publish_positions()
            else:
                job.cancel_reason = reason
        self._gauges()
        return job

    def summary(self, job: Job) -> dict[str, Any]:
        """What GET /api/jobs/{id} returns."""
        with self._lock:
            return {
                "id": job.id, "status": job.status, "queue_position": self._position(job),
                "step": job.step, "total": job.total, "created": job.created,
                "started": job.started, "finished": job.finished, "error": job.error,
                "request": job.request.model_dump(mode="json"), "images": list(job.images),
                "timings": dict(job.timings), "teleport": list(job.teleport),
            }

    def _position(self, job: Job) -> int | None:
        return self._queue.index(job) + 1 if job.status == "queued" else None

    # -- events --------------------------------------------------------------------------
    def _publish(self, job: Job, event: str, data: dict[str, Any]) -> None:
        """Append an event (caller holds the lock) and wake the loop's subscribers."""
        job.events.append({"event": event, "data": {"id": job.id, **data}})
        if self._mirror is not None:
            self._mirror.publish(job.id, job.events[-1])
        self._in_loop(job.changed.set)

    def _in_loop(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the event loop (asyncio objects are not thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile: no one is listening
            pass

    def events_since(self, job: Job, index: int) -> list[dict[str, Any]]:
        """Copies of the events from ``index`` on (the worker may still edit the originals)."""
        with self._lock:
            return [{"event": e["event"], "data": dict(e["data"])} for e in job.events[index:]]

    def watch(self, job: Job, delta: int) -> None:
        with self._lock:
            job.watchers += delta

    def _publish_positions(self) -> None:
        for i, queued in enumerate(self._queue):
            self._publish(queued, "queued", {"position": i + 1})

    # -- worker --------------------------------------------------------------------------
    def worker_down(self) -> str | None:
        """Why the worker cannot run jobs (None while it can, or before it started)."""
        if self._stopping or all(thread.is_alive() for thread in self._threads):
            return None  # running (or not started yet: no threads)
        return f"the job worker stopped: {self.worker_error or 'unknown reason'}"

    def store_down(self) -> str | None:
        """Why the shared state store failed the last time the mirror asked (None: fine)."""
        mirror = self._mirror
        return mirror.down if mirror is not None else None

    def _worker(self) -> None:
        """The worker thread: ``_work`` survives any Exception; anything else that ends the
        thread is recorded, so /api/ready and submit say the worker is gone."""
        try:
            self._work()
        except BaseException as exc:
            self.worker_error = f"{type(exc).__name__}: {exc}"
            log.critical("zturbo: the job worker stopped: %s", self.worker_error)
            with self._lock:
                self._accepting = False
                self._queue.clear()
                for job in list(self._jobs.values()):  # nothing will run them: end them now
                    if not job.terminal:
                        self._finish(job, "error",
                                     error=f"the job worker stopped: {self.worker_error}")

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait(timeout=5.0 if self._unwritten else None)
                    self._retry_history()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.status, job.started = "running", time.time()
                self._running.append(job)
                self._publish(job, "started", {"total": job.total})
                self._publish_positions()
            try:
                self._gauges()
                self._write_history(job.id, "running", started=job.started)
                if self.metrics:
                    self.metrics.observe_stage("queue", job.started - job.created)
                self._run(job)
            except Exception as exc:  # a bug outside generate(): end this job, keep serving
                log.exception("job %s: the worker failed around it", job.id)
                with self._lock:
                    if not job.terminal:
                        self._finish(job, "error",
                                     error=f"server error: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._running.remove(job)
                    self._wake.notify_all()
                self._gauges()

    def _write_history(self, job_id: str, status: str, **fields: Any) -> None:
        """Record a job's state; a failing write (disk full, locked) is kept and retried."""
        try:
            self.history.set_job(job_id, status, **fields)
        except Exception as exc:
            log.warning("history: cannot record job %s as %s (%s); retrying later",
                        job_id, status, exc)
            self._unwritten.append((job_id, status, fields))

    def _retry_history(self) -> None:
        """Write the history rows that failed before, oldest first, until one fails again."""
        while self._unwritten:
            job_id, status, fields = self._unwritten[0]
            try:
                self.history.set_job(job_id, status, **fields)
            except Exception:
                return
            self._unwritten.popleft()

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            if started > job.deadline:
                job.timed_out = True
                raise Cancelled("timed out in the queue")
            result = self.runner(self.engine, job.request, on_step=self._on_step(job),
                                 source=job.source)
            images = self._save(job, result)
        except Cancelled:
            with self._lock:
                if job.timed_out:
                    self._finish(job, "error", error=self._timeout_message())
                else:
                    self._finish(job, "cancelled", error=job.cancel_reason or "cancelled")
            return
        except (DeviceLost, StoreUnavailable) as exc:
            with self._lock:
                job.device_lost = True
                self._finish(job, "error", error=str(exc))
            return
        except ZTurboError as exc:
            with self._lock:
                job.bad_input = True
                self._finish(job, "error", error=str(exc))
            return
        except Exception as exc:  # a bug or the device failing: report it, keep serving
            log.exception("job %s failed", job.id)
            with self._lock:
                self._finish(job, "error", error=f"generation failed: {type(exc).__name__}: {exc}")
            return
        run_s = time.monotonic() - started
        if self.metrics:  # before the job ends: a client that sees it done sees its metrics
            self.metrics.job_result(result)
        with self._lock:
            self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * run_s
            job.images = images
            job.timings = {k: round(v, 6) for k, v in result.timings.items()}
            job.teleport = list(result.teleport)
            job.warnings = list(result.warnings)
            job.step = job.total
            self._finish(job, "done")

    def _timeout_message(self) -> str:
        return f"timed out after {self.settings.request_timeout_s:g} s (setting request_timeout_s)"

    def _on_step(self, job: Job):
        """The step callback: cancel and timeout checks, progress, a preview every few steps."""
        steps, every = job.request.steps, self.settings.preview_every
        state = {"image": 0, "last": 0}

        def on_step(done: int, total: int, latents) -> None:
            if job.cancel_reason:
                raise Cancelled(job.cancel_reason)
            if time.monotonic() > job.deadline:
                job.timed_out = True
                raise Cancelled("timed out")
            if done <= state["last"]:
                state["image"] += 1
            state["last"] = done
            data = {"step": state["image"] * steps + done, "total": job.total,
                    "image": state["image"]}
            if (every and job.watchers and latents is not None
                    and (done % every == 0 or done == total)):  # remote runs send no latents
                data["preview"] = preview_data_url(latents)
            with self._lock:
                job.step = data["step"]
                self._publish(job, "step", data)

        return on_step

    def _save(self, job: Job, result: Result) -> list[dict[str, Any]]:
        """Write each image as a PNG with its parameters and record it in the history."""
        saved = []
        t = time.perf_counter()
        for i, seed in enumerate(result.seeds):
            image_id = uuid.uuid4().hex
            path = save_png(result, i, self.outputs / f"{image_id}.png")
            if self.history.shared:  # other ingresses fetch the bytes from the store
                self.history.put_png(image_id, path.read_bytes())
            teleport = result.teleport[i] if i < len(result.teleport) else {}
            request = result.request.for_seed(seed).model_dump(mode="json")
            row = {
                "id": image_id, "job_id": job.id, "idx": i, "created": time.time(),
                "prompt": result.request.prompt, "seed": seed, "width": result.request.width,
                "height": result.request.height, "request": request, "model": result.model,
                "fingerprint": result.fingerprint,
                "timings": {k: round(v, 6) for k, v in result.timings.items()},
                "teleport": teleport, "path": str(path),
            }
            replay = self.history.replay(row, len(result.seeds))  # before this row is in
            self.history.add_image(row)
            saved.append({"id": image_id, "seed": seed, "url": image_url(image_id),
                          "teleport": teleport, "request": request, **replay})
        result.timings["save"] = time.perf_counter() - t
        return saved

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        """Make a job terminal (caller holds the lock): history, event, memory bound.
        The job ends (its event is set) even when the history write fails."""
        job.status, job.finished, job.error = status, time.time(), error
        self._retry_history()
        self._write_history(job.id, status, finished=job.finished, error=error)
        if status == "done":
            self._publish(job, "done", {"images": job.images, "timings": job.timings,
                                        "teleport": job.teleport, "seeds": job.request.seeds(),
                                        "warnings": job.warnings})
        elif status == "cancelled":
            self._publish(job, "cancelled", {"reason": error, "step": job.step})
        else:
            self._publish(job, "error", {"message": error, "timeout": job.timed_out})
        for event in job.events:  # previews are for live watchers only: free them
            event["data"].pop("preview", None)
        self._finished.append(job.id)
        while len(self._finished) > KEEP_FINISHED:
            self._jobs.pop(self._finished.popleft(), None)
        if self.metrics:
            self.metrics.job_finished(status, timed_out=job.timed_out)
        self._in_loop(job.ended.set)

    def _gauges(self) -> None:
        if self.metrics:
            with self._lock:
                queued, running = len(self._queue), len(self._running)
            self.metrics.set_queue(queued, running)


async def follow(queue: JobQueue, job: Job, previews: bool = True):
    """Yield a job's events as they happen, from the first, until it ends. ``previews``:
    count this follower as a watcher, so step events carry preview images."""
    watching = 1 if previews else 0
    queue.watch(job, +watching)
    try:
        index = 0
        while True:
            job.changed.clear()
            events = queue.events_since(job, index)
            index += len(events)
            for event in events:
                yield event
                if event["event"] in ("done", "error", "cancelled", "interrupted"):
                    return
            if not events:
                await job.changed.wait()
    finally:
        queue.watch(job, -watching)
