"""The owning ingress's side of the shared state (``state_backend: redis``): one thread
that copies this JobQueue's events into the store (in order, off the queue's lock), renews
the ingress's lease, ends the jobs of ingresses whose lease ran out, and turns cancel
requests posted through other ingresses into cancels here.

The JobQueue stays the authority for its own jobs; the store is what the others read.
A Redis outage is logged once and retried: events wait in a bounded outbox meanwhile.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from zturbo.caches.base import OutageLog
from zturbo.server.store.base import SharedStore
from zturbo.server.store.redis_store import StoreUnavailable

log = logging.getLogger("zturbo.server")
POLL_S = 0.1  # how often cancel requests from other ingresses are looked for
MAX_OUTBOX = 100_000  # events kept while Redis is down (the oldest go first)


class Mirror:
    """``publish`` events; ``start``/``stop`` the thread."""

    def __init__(self, store: SharedStore, active: Callable[[], list[str]],
                 cancel: Callable[[str, str], Any]) -> None:
        self.store, self._active, self._cancel = store, active, cancel
        self._outbox: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=MAX_OUTBOX)
        self._wake = threading.Condition()
        self._stop = False
        self.down: str | None = None  # why Redis failed the last step (None: it answers)
        self._outages = OutageLog(log)  # a flapping Redis: a line a minute, not one per flip
        self._thread = threading.Thread(target=self._loop, name="zturbo-shared", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what waits (bounded by ``timeout``) and end the thread."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        """Queue a copy of an event for the store (never blocks on Redis)."""
        with self._wake:
            self._outbox.append((job_id, {"event": event["event"], "data": dict(event["data"])}))
            self._wake.notify_all()

    def _loop(self) -> None:
        beat_every = self.store.lease_s / 3
        next_beat = 0.0
        while True:
            with self._wake:
                if not self._outbox and not self._stop:
                    self._wake.wait(POLL_S)
                stopping = self._stop
            self._guarded(self._flush)
            if stopping:
                return
            self._guarded(self._poll_cancels)
            if time.monotonic() >= next_beat:
                self._guarded(self._beat)
                next_beat = time.monotonic() + beat_every

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step; a Redis outage is logged once (and once when it ends)."""
        try:
            step()
        except StoreUnavailable as exc:
            if self.down is None:
                self._outages.down("shared state: %s; events wait meanwhile", exc)
            self.down = str(exc)
            time.sleep(POLL_S)
            return
        except Exception:  # a bug here must not end the thread: log it, go on
            log.exception("shared state: the mirror thread failed a step")
            return
        if self.down is not None:
            self._outages.up("shared state: Redis answers again")
        self.down = None

    def _flush(self) -> None:
        while True:
            with self._wake:
                if not self._outbox:
                    return
                job_id, event = self._outbox[0]
            self.store.add_event(job_id, event)
            with self._wake:
                if self._outbox and self._outbox[0][1] is event:
                    self._outbox.popleft()

    def _poll_cancels(self) -> None:
        for job_id, reason in self.store.cancel_reasons(self._active()).items():
            self._cancel(job_id, reason)

    def _beat(self) -> None:
        self.store.heartbeat()
        self.store.expire_owners()
