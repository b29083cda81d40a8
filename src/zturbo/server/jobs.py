"""The job queue: one worker thread owns the device and runs jobs one at a time.

The event loop never runs a generation: HTTP handlers submit a ``Job`` and await its
events. Job state is changed only under ``JobQueue._lock``; events cross from the worker
thread to the event loop with ``call_soon_threadsafe``.

History writes never happen under that lock: a job's rows (its status changes, its images)
join one ordered queue of pending writes, which the worker writes between jobs. A write
that fails (disk full, a database locked past its busy timeout) stays queued and is retried
every ``HISTORY_RETRY_S``; meanwhile the job ends as it ran (``done`` with its images, which
are served from the queued rows) and ``history_down`` says why the history is behind
(/api/ready answers 503). A submission whose first row cannot be written is refused (503).

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
from zturbo.server.store.base import TERMINAL, Store
from zturbo.server.store.redis_store import StoreUnavailable

log = logging.getLogger("zturbo.server")
KEEP_FINISHED = 256  # finished jobs kept in memory for GET /api/jobs/{id}; older ones: history
HISTORY_RETRY_S = 2.0  # how often the idle worker retries history writes that failed


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
    model: str  # the engine pool's name of the model that runs it
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

    def __init__(self, settings, history: Store | None, outputs: Path,
                 metrics=None, *, runner=generate, workers: int = 1) -> None:
        """``runner(engine, request, on_step=, source=)`` (and ``on_event=`` for a request
        that asks for prompt enhancement) makes a Result (``generate``; the
        Ray app passes one that calls generator replicas); ``workers`` threads run jobs
        (one per local device; as many as the replicas behind a Ray ingress)."""
        self.pool = None  # the engine pool (zturbo.server.pool), set by start()
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
        # history writes not made yet, oldest first: (store method, args, keyword args);
        # written by the worker between jobs, kept and retried while they fail
        self._unwritten: collections.deque[tuple[str, tuple, dict[str, Any]]] = (
            collections.deque())
        self._history_lock = threading.Lock()  # one writer of _unwritten at a time, in order
        self._history_error: str | None = None  # why the last history write failed
        self._reserved = 0  # queue slots held by submissions writing their first row
        self.worker_error: str | None = None  # why the worker thread ended, if it did
        self._mirror: Mirror | None = None  # copies events to a shared store (redis backend)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, pool, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker on an engine pool; events are delivered on ``loop``. A job
        runs once its model is loaded (loads run beside the worker: a job for a loaded
        model never waits for another model's load)."""
        self.pool = pool
        pool.on_change(self._poke)
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
        self._flush_history()
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
        try:
            self.history.interrupt_unfinished("the server shut down before it finished")
        except StoreUnavailable as exc:  # its lease expires (or the next start ends them)
            log.warning("state store: cannot close this server's jobs: %s", exc)

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
    def submit(self, request: Request, source: Any = None, model: str | None = None) -> Job:
        """Queue a request for ``model`` (None: the default), or raise QueueFull (-> 429) /
        NotAccepting (-> 503) / StoreUnavailable (its history row cannot be written: -> 503)
        / the pool's UnknownModel, ModelTooLarge, ModelFailed. The model is pinned (never
        evicted) until the job ends, and its load starts now if it is not loaded.

        Blocking (the row is written here, waiting out a busy database): call it off the
        event loop. The row is written outside the queue's lock, in a slot held meanwhile."""
        now = time.time()
        model = self.pool.resolve(model) if self.pool is not None else (model or "")
        job = Job(id=uuid.uuid4().hex, request=request, created=now, model=model,
                  deadline=time.monotonic() + self.settings.request_timeout_s, source=source)
        with self._lock:
            if not self._accepting:
                raise NotAccepting(self.worker_down() or
                                   "the server is not accepting jobs (loading or shutting down)")
            if len(self._queue) + self._reserved >= self.settings.queue_depth:
                retry = self._retry_after()
                raise QueueFull(f"the queue is full ({self.settings.queue_depth} jobs waiting); "
                                f"retry in {retry} s", retry)
            self._reserved += 1
        try:
            self.pool.hold(model)  # refused here: unknown, too large, failed lately
        except ZTurboError:
            with self._lock:
                self._reserved -= 1
            raise
        try:
            self.history.add_job(job.id, request.model_dump(mode="json"), now)
        except Exception as exc:
            self._history_failed(exc)
            self.pool.release(model)
            with self._lock:
                self._reserved -= 1
                self._wake.notify_all()  # the idle worker probes until writes succeed
            raise StoreUnavailable(str(exc)) from None
        with self._lock:
            self._reserved -= 1
            if not self._accepting:  # shut down (or the worker died) while the row was written
                self._unwritten.append(("set_job", (job.id, "cancelled"), {
                    "finished": time.time(), "error": "the server stopped accepting jobs"}))
                self.pool.release(model)
                raise NotAccepting(self.worker_down() or "the server is shutting down")
            self._queue.append(job)
            self._jobs[job.id] = job
            self._publish(job, "queued", {"position": len(self._queue)})
            self._wake.notify_all()
        if not self.pool.ready(model):
            self.pool.start_load(model)  # beside the worker; it wakes the worker when done
        self._gauges()
        return job

    def _poke(self) -> None:
        """A model loaded, failed or was evicted: the worker looks at the queue again."""
        with self._lock:
            self._wake.notify_all()

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
                self._wake.notify_all()  # its row is written by the worker
            else:
                job.cancel_reason = reason
        self._gauges()
        return job

    def summary(self, job: Job) -> dict[str, Any]:
        """What GET /api/jobs/{id} returns."""
        with self._lock:
            return {
                "id": job.id, "status": job.status, "model": job.model,
                "queue_position": self._position(job),
                "step": job.step, "total": job.total, "created": job.created,
                "started": job.started, "finished": job.finished, "error": job.error,
                "request": job.request.model_dump(mode="json"), "images": list(job.images),
                "timings": dict(job.timings), "teleport": list(job.teleport),
                "warnings": list(job.warnings),
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

    def history_down(self) -> str | None:
        """Why history writes fail now (None: the last one succeeded and none is waiting)."""
        return self._history_error

    def pending_image(self, image_id: str) -> dict[str, Any] | None:
        """The row of an image whose history write is still queued (None: not queued)."""
        for method, args, _ in list(self._unwritten):
            if method == "add_image" and args[0]["id"] == image_id:
                return args[0]
        return None

    def store_down(self) -> str | None:
        """Why the shared state store failed the last time the mirror asked (None: fine)."""
        mirror = self._mirror
        return mirror.down if mirror is not None else None

    def _worker(self) -> None:
        """The worker thread: ``_work`` survives any Exception; anything else that ends the
        thread is recorded, so /api/ready and submit say the worker is gone."""
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - recorded, then the thread ends
            self.worker_error = f"{type(exc).__name__}: {exc}"
            log.critical("zturbo: the job worker stopped: %s", self.worker_error)
            with self._lock:
                self._accepting = False
                self._queue.clear()
                for job in list(self._jobs.values()):  # nothing will run them: end them now
                    if not job.terminal:
                        self._finish(job, "error",
                                     error=f"the job worker stopped: {self.worker_error}")
            self._flush_history()

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._gauges()
                self._record("set_job", job.id, "running", started=job.started)
                self._flush_history()
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

    def _next_job(self) -> Job | None:
        """The next job, marked running (None: stopping). Between jobs the worker writes the
        queued history rows, and retries them every HISTORY_RETRY_S while they fail."""
        while True:
            self._flush_history()
            with self._lock:
                if self._stopping:
                    return None
                job = self._runnable()
                if job is not None:
                    self._queue.remove(job)
                    job.status, job.started = "running", time.time()
                    self._running.append(job)
                    self._publish(job, "started", {"total": job.total})
                    self._publish_positions()
                    return job
                behind = self._unwritten or self._history_error or self._queue
                self._wake.wait(timeout=HISTORY_RETRY_S if behind else None)

    def _runnable(self) -> Job | None:
        """The first queued job whose model is loaded (caller holds the lock). Jobs whose
        model failed to load end here (503: the model's state says why)."""
        for job in list(self._queue):
            if self.pool.ready(job.model):
                return job
            why = self.pool.failed(job.model)
            if why is not None:
                job.device_lost = True
                self._end_queued(job, f"model {job.model!r} failed to load: {why}")
            elif time.monotonic() > job.deadline:  # its model's load never came in time
                job.timed_out = True
                self._end_queued(job, self._timeout_message())
        return None

    def _end_queued(self, job: Job, error: str) -> None:
        """End a queued job that will never run (caller holds the lock)."""
        self._queue.remove(job)
        self._finish(job, "error", error=error)
        self._publish_positions()

    def _record(self, method: str, *args: Any, **fields: Any) -> None:
        """Queue one history write (``self.history.<method>(*args, **fields)``)."""
        self._unwritten.append((method, args, fields))

    def _flush_history(self) -> None:
        """Write the queued history rows, oldest first, until one fails (it stays queued).
        With nothing queued after a failure, a probe write says when the store is back."""
        with self._history_lock:
            try:
                if not self._unwritten and self._history_error:
                    self.history.probe()
                while self._unwritten:
                    method, args, fields = self._unwritten[0]
                    getattr(self.history, method)(*args, **fields)
                    self._unwritten.popleft()
            except Exception as exc:
                self._history_failed(exc)
                return
            if self._history_error is not None:
                log.warning("history: writes succeed again")
            self._history_error = None

    def _history_failed(self, exc: Exception) -> None:
        """Remember why a history write failed; log the first failure of a streak."""
        if self._history_error is None:
            log.warning("history: a write failed (%s); keeping %d row(s) to retry every %g s",
                        exc, len(self._unwritten), HISTORY_RETRY_S)
        self._history_error = f"history writes fail: {exc}"

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        result, images = None, []
        try:
            if started > job.deadline:
                job.timed_out = True
                raise Cancelled("timed out in the queue")
            events = {"on_event": self._on_event(job)} if job.request.enhance else {}
            engine = self.pool.load(job.model)  # loaded, and pinned by the job since submit
            result = self.runner(engine, job.request, on_step=self._on_step(job),
                                 source=job.source, **events)
            images = self._save(job, result)
            status, error = "done", None
        except Cancelled:
            status, error = (("error", self._timeout_message()) if job.timed_out
                             else ("cancelled", job.cancel_reason or "cancelled"))
        except (DeviceLost, StoreUnavailable) as exc:
            job.device_lost = True
            status, error = "error", str(exc)
        except ZTurboError as exc:
            job.bad_input = True
            status, error = "error", str(exc)
        except Exception as exc:  # a bug or the device failing: report it, keep serving
            log.exception("job %s failed", job.id)
            status, error = "error", f"generation failed: {type(exc).__name__}: {exc}"
        # the rows go in (or are queued to retry) before the job ends, so a client that
        # saw it end finds it in the history
        finished = time.time()
        self._record("set_job", job.id, status, finished=finished, error=error)
        self._flush_history()
        if self.metrics and result is not None and status == "done":  # counted before it ends
            self.metrics.job_result(result)
        with self._lock:
            if result is not None and status == "done":
                self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * (time.monotonic() - started)
                job.images = images
                job.timings = {k: round(v, 6) for k, v in result.timings.items()}
                job.teleport = [report.as_dict() for report in result.teleport]
                job.warnings = list(result.warnings)
                job.step = job.total
            self._finish(job, status, error=error, finished=finished)

    def _timeout_message(self) -> str:
        return f"timed out after {self.settings.request_timeout_s:g} s (setting request_timeout_s)"

    def _check_live(self, job: Job) -> None:
        """Stop a job that was cancelled or ran past its deadline (at its next step or token)."""
        if job.cancel_reason:
            raise Cancelled(job.cancel_reason)
        if time.monotonic() > job.deadline:
            job.timed_out = True
            raise Cancelled("timed out")

    def _on_event(self, job: Job):
        """Events before the steps (prompt enhancement): cancel and timeout checks on each
        token; the enhanced prompt as an ``enhanced`` event before denoising starts."""
        def on_event(name: str, data: dict[str, Any]) -> None:
            self._check_live(job)
            if name == "enhanced":
                with self._lock:
                    self._publish(job, "enhanced", dict(data))

        return on_event

    def _on_step(self, job: Job):
        """The step callback: cancel and timeout checks, progress, a preview every few steps."""
        steps, every = job.request.steps, self.settings.preview_every
        state = {"image": 0, "last": 0}

        def on_step(done: int, total: int, latents) -> None:
            self._check_live(job)
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
            teleport = result.teleport[i].as_dict() if i < len(result.teleport) else {}
            request = result.request.for_seed(seed).model_dump(mode="json")
            row = {
                "id": image_id, "job_id": job.id, "idx": i, "created": time.time(),
                "prompt": result.request.prompt, "seed": seed, "width": result.request.width,
                "height": result.request.height, "request": request, "model": job.model,
                "fingerprint": result.fingerprint,
                "timings": {k: round(v, 6) for k, v in result.timings.items()},
                "teleport": teleport, "path": str(path),
            }
            replay = self.history.replay(row, len(result.seeds))  # before this row is in
            self._record("add_image", row)  # written with the job's rows, retried if it fails
            saved.append({"id": image_id, "seed": seed, "url": image_url(image_id),
                          "teleport": teleport, "request": request, **replay})
        result.timings["save"] = time.perf_counter() - t
        return saved

    def _finish(self, job: Job, status: str, error: str | None = None,
                finished: float | None = None) -> None:
        """Make a job terminal (caller holds the lock): history, event, memory bound.
        ``finished``: the caller queued the job's final row itself, at that time; else it
        is queued here (the worker writes it). The job ends (its event is set) even when
        the history write fails."""
        job.status, job.finished, job.error = status, finished or time.time(), error
        if self.pool is not None:
            self.pool.release(job.model)  # no longer pinned by this job
        if finished is None:
            self._record("set_job", job.id, status, finished=job.finished, error=error)
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
            self.metrics.job_finished(status, timed_out=job.timed_out, model=job.model)
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
