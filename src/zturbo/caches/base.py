"""The contract every cache tier keeps, and the checks on what reaches one.

A cache is best effort: a tier that fails (disk full, Redis down) counts an error, logs a
warning and answers "miss"; it never fails the generation that asked it.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
import time

from zturbo.errors import ZTurboError

SCHEMA = 1  # bump when the layout of any stored entry changes; enters every entry and key

log = logging.getLogger("zturbo.caches")

_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEY = re.compile(r"[0-9a-f]{16,128}")
_WARN_EVERY_S = 300.0


def check_kind(kind: str) -> str:
    """A kind names a folder and a key prefix, so it is a short lower-case identifier."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ZTurboError(f"invalid cache kind {kind!r}: use lower-case letters, digits and _")
    return kind


def check_key(kind: str, key: str) -> None:
    """Keys are hex digests (sha256): anything else is a caller bug or a path trick."""
    check_kind(kind)
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ZTurboError(f"invalid cache key {key!r}: expected a lower-case hex digest")


class CacheTier(abc.ABC):
    """One storage level. ``name`` is "memory", "disk" or "redis"."""

    name: str

    def __init__(self) -> None:
        self._errors = 0
        self._warned_at = -_WARN_EVERY_S
        self._error_lock = threading.Lock()

    @abc.abstractmethod
    def get(self, kind: str, key: str) -> bytes | None:
        """The stored bytes, or None (absent, corrupt, or the tier is unavailable)."""

    @abc.abstractmethod
    def put(self, kind: str, key: str, data: bytes) -> None:
        """Store ``data``; failures are counted and logged, never raised."""

    @abc.abstractmethod
    def delete(self, kind: str, key: str) -> None:
        """Forget one entry (absent is fine)."""

    @abc.abstractmethod
    def clear(self, kind: str | None = None) -> int:
        """Remove every entry of ``kind`` (all kinds when None); returns how many."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """entries, bytes, evictions, errors, and per-kind ``kinds``."""

    def close(self) -> None:
        """Release files and sockets."""

    def failed(self, what: str, exc: BaseException) -> None:
        """Count an error; warn at most once every few minutes so a broken tier can't flood logs."""
        with self._error_lock:
            self._errors += 1
            now = time.monotonic()
            loud = now - self._warned_at >= _WARN_EVERY_S
            if loud:
                self._warned_at = now
        if loud:
            log.warning("%s cache tier: %s failed (%s: %s); carrying on without it",
                        self.name, what, type(exc).__name__, exc)
