"""What the HTTP handlers share (``ServerState``), reached from a request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from zturbo.config import Settings
from zturbo.server.jobs import JobQueue
from zturbo.server.metrics import Metrics
from zturbo.server.store import History, RedisStore


@dataclass
class ServerState:
    """What the handlers share: settings, the engine once loaded, the queue, history, metrics."""

    settings: Settings
    history: History | RedisStore | None  # the state store (server/store), opened by the lifespan
    jobs: JobQueue
    metrics: Metrics
    engine: Any = None
    load_error: str | None = None
    # the engine's fingerprint, read once before the worker starts: /api/ready must not
    # read engine.extras while a request may change it (only under the engine lock)
    fingerprint: str | None = None
    announce: str | None = None  # the URL to record in the state dir once ready (zturbo serve)
    record: Path | None = None  # that record (zturbo.server.running), removed at shutdown


def state(request: Request) -> ServerState:
    return request.app.state.zturbo
