"""What the HTTP handlers share (``ServerState``), reached from a request."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from zturbo.config import Settings
from zturbo.server.announce import Announcer
from zturbo.server.jobs import JobQueue
from zturbo.server.metrics import Metrics
from zturbo.server.pool import EnginePool
from zturbo.server.store import Store


class Slots:
    """A cap on something held open (event streams): ``take`` a slot or be refused."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


@dataclass
class ServerState:
    """What the handlers share: settings, the engine pool, the queue, history, metrics."""

    settings: Settings
    history: Store | None  # the state store (server/store), opened by the lifespan
    jobs: JobQueue
    metrics: Metrics
    pool: EnginePool
    # the default model's engine may be used: given by the caller, or its start-up load
    # ended (with several models, either way: the others serve)
    started: bool = False
    load_error: str | None = None
    # the engine's fingerprint, read once before the worker starts: /api/ready must not
    # read engine.extras while a request may change it (only under the engine lock)
    fingerprint: str | None = None
    announce: str | None = None  # the URL to record in the state dir once ready (zturbo serve)
    record: Announcer | None = None  # writes that record (zturbo.server.running); withdrawn at shutdown
    streams: Slots = field(init=False)  # open event streams (max_event_streams)

    def __post_init__(self) -> None:
        self.streams = Slots(self.settings.max_event_streams)

    @property
    def engine(self) -> Any:
        """The default model's engine while it is loaded (None before the server started)."""
        return self.pool.peek() if self.started else None

    @property
    def several(self) -> bool:
        """Several named models ([models.*] tables): the request's model picks one."""
        return bool(self.settings.models)


def state(request: Request) -> ServerState:
    return request.app.state.zturbo
