"""The contract every cache tier keeps, and the checks on what reaches one.

A cache is best effort: a tier that fails (disk full, Redis down) counts an error, logs a
warning and answers "miss"; it never fails the generation that asked it.
"""

from __future__ import annotations

import abc
import logging
import math
import re
import threading
import time

from zturbo.errors import ZTurboError

SCHEMA = 1  # bump when the layout of any stored entry changes; enters every entry and key

log = logging.getLogger("zturbo.caches")

_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

# The kinds of entry the engine stores (each a folder and a key prefix); writers use these
# names, and ``check_kind`` refuses any other, so this tuple is every kind there is.
# ``repeat``: an exact repeat's record (the image key a request got, found before loading).
TELEPORT, IMAGE, EMBEDDING, VAE_LATENT, ENHANCED, REPEAT = KINDS = (
    "teleport", "image", "embedding", "vae_latent", "enhanced", "repeat")
_KEY = re.compile(r"[0-9a-f]{16,128}")
_WARN_EVERY_S = 300.0
OUTAGE_LOG_EVERY_S = 60.0


class OutageLog:
    """Logs a service going down and coming back: a Redis that flaps (down, up, down...)
    would otherwise write a line per change, hundreds a minute. A "down" is logged at most
    once per ``every_s``, and a "back" only after a logged "down" (so the log never leaves
    an outage it reported open); the changes in between are counted into the next line.
    The state now is in the stats (``up``) and /api/ready."""

    def __init__(self, logger: logging.Logger, every_s: float = OUTAGE_LOG_EVERY_S) -> None:
        self.logger, self.every_s = logger, every_s
        self._lock = threading.Lock()
        self._down_at = -math.inf  # when the last logged "down" was
        self._open = False  # a logged "down" not yet followed by a logged "back"
        self._skipped = 0

    def down(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            loud = not self._open and now - self._down_at >= self.every_s
            if loud:
                self._down_at, self._open = now, True
            skipped = self._take_skipped(loud)
        if loud:
            self._log(message, args, skipped)

    def up(self, message: str, *args: object) -> None:
        with self._lock:
            loud, self._open = self._open, False
            skipped = self._take_skipped(loud)
        if loud:
            self._log(message, args, skipped)

    def _take_skipped(self, loud: bool) -> int:
        if not loud:
            self._skipped += 1
            return 0
        skipped, self._skipped = self._skipped, 0
        return skipped

    def _log(self, message: str, args: tuple, skipped: int) -> None:
        if skipped:
            message += " (%d up/down changes not logged since the last such line)"
            args = (*args, skipped)
        self.logger.warning(message, *args)


def check_kind(kind: str) -> str:
    """``kind`` if it is one of ``KINDS`` (a kind names a folder and a key prefix)."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind) or kind not in KINDS:
        raise ZTurboError(f"invalid cache kind {kind!r}: the kinds are {', '.join(KINDS)}")
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
