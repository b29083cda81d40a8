"""What every ingress of one service shares: one interface (``base.Store``), two backends.

``LocalStore`` (SQLite + PNG files under the outputs dir) is the single-process default:
the jobs live in this process's JobQueue, so the store only keeps their rows and the
images. ``RedisStore`` (``state_backend: redis``, a ``base.SharedStore``) shares everything
another ingress needs to watch, cancel and fetch a job it did not run: the job record and
its status, the event log a follower reads (SSE), cancel requests, the PNG bytes and the
history rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zturbo.config import Settings
from zturbo.errors import ZTurboError
from zturbo.server.store.base import SharedStore, Store, StoreUnavailable
from zturbo.server.store.history import LocalStore
from zturbo.server.store.redis_store import RedisStore

log = logging.getLogger("zturbo.server")

__all__ = ["LocalStore", "RedisStore", "SharedStore", "Store", "StoreUnavailable", "open_store"]


def open_store(settings: Settings, history_file: Path, outputs: Path) -> Store:
    """The store ``settings.state_backend`` names: SQLite + files, or Redis (checked: one
    that may evict keys is refused)."""
    if settings.state_backend == "redis":
        return open_redis_state(settings)
    return LocalStore(history_file, outputs)


def open_redis_state(settings: Settings) -> RedisStore:
    """The shared state store on ``state_redis_url`` (else ``redis_url``), refused with a
    ZTurboError when that Redis may evict keys. Unreachable now: opened unchecked (requests
    say 503 until it answers), with a warning."""
    url = settings.state_redis_url or settings.redis_url
    if not url:
        raise ZTurboError("state_backend redis needs redis_url (or state_redis_url)")
    store = RedisStore(url, ttl_s=settings.redis_ttl_s, timeout_s=settings.redis_timeout_s,
                       lease_s=settings.state_lease_s)
    try:
        store.check_no_eviction()
    except StoreUnavailable as exc:
        log.warning("shared state: cannot check the Redis eviction policy now: %s", exc)
    except ZTurboError:
        store.close()
        raise
    return store
