"""A bounded background writer: cache entries are built and stored off the request's path.

Building an entry (moving captured latents to the host, packing them into safetensors with
their hashes, PNG-encoding an image) costs time a request need not wait for. ``submit``
queues the job and returns at once; one thread runs the jobs in order. A full queue skips
the entry (``submit`` returns False): a request never waits on storage. An entry becomes
visible only when it is complete, since a tier's ``put`` takes finished bytes; a lookup of
an entry still queued waits for that one job (``wait_for``), so a repeat never misses what
the previous request stored. ``drain`` waits for every queued job (stats, shutdown).

On Linux the writer's thread runs at a lower CPU priority (nice + ``WRITER_NICE``): where
the cores are all busy (a CPU-only engine, a loaded host), its PNG encodes and packing
wait for the request threads instead of taking their time slices. benchmarks/new_prompt.py
measures it (docs/performance.md).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("zturbo.caches")

Job = Callable[[], None]
WRITER_NICE = 10  # added to the process's nice value for the writer's thread (max 19)


def lower_thread_priority(step: int = WRITER_NICE) -> None:
    """Raise the calling thread's nice value by ``step`` (Linux, where a thread's id names
    it to setpriority; elsewhere, or when refused, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except OSError as exc:
        log.debug("cache writer: cannot lower its priority: %s", exc)


class BackgroundWriter:
    """One daemon thread over a queue of at most ``depth`` jobs; 0 runs each job inline."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.skipped = 0
        self._queue: queue.Queue[tuple[tuple[str, str], Job, threading.Event] | None] = \
            queue.Queue(depth)
        self._pending: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, key: str, job: Job) -> bool:
        """Run ``job`` (which stores the entry ``kind``/``key``) soon; False when skipped."""
        if self.depth <= 0:
            job()
            return True
        done = threading.Event()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zturbo-cache-writer",
                                                daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(((kind, key), job, done))
            except queue.Full:
                self.skipped += 1
                log.info("cache writer queue full: %s entry %s not stored", kind, key[:12])
                return False
            self._pending[(kind, key)] = done
        return True

    def wait_for(self, kind: str, key: str, timeout: float = 60.0) -> None:
        """Wait until a queued job for this entry has run (at once when none is queued)."""
        with self._lock:
            done = self._pending.get((kind, key))
        if done is not None:
            done.wait(timeout)

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until every job queued so far has run."""
        with self._lock:
            waiting = list(self._pending.values())
        for done in waiting:
            done.wait(timeout)

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        self.drain()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is None:
                return
            entry, job, done = item
            try:
                job()
            except Exception:  # noqa: BLE001 - a failed write is a missing entry, never a crash
                log.exception("cache writer: storing %s entry %s failed", *entry)
            finally:
                with self._lock:
                    if self._pending.get(entry) is done:  # a later job keeps its own
                        del self._pending[entry]
                done.set()
