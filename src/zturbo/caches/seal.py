"""Sealed entries: what the shared tiers (disk, Redis) store carries an HMAC-SHA256 over its
kind, key and bytes, under a secret only the replicas know.

Anyone who can write to the Redis (or the cache folder) could otherwise decide what every
replica serves: take one request's entry, re-key it and store it under another request's
key. A checksum can't stop that (the writer recomputes it); a MAC can, as long as the
secret stays with the replicas. An entry whose MAC does not verify (forged, written under
another secret, or written before entries were sealed) is a miss.

The secret is the ``cache_secret`` setting; unset, it is generated once into
``<state dir>/cache.secret`` (mode 0600) and read from there. Replicas that share a tier
must share the secret: the same ``ZTURBO_CACHE_SECRET`` everywhere, or one state dir.

Layout: ``MAGIC`` (4 bytes) + MAC (32 bytes) + the entry's bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from pathlib import Path

from zturbo.errors import ZTurboError
from zturbo.paths import state_dir

log = logging.getLogger("zturbo.caches")

MAGIC = b"ZTS1"  # zturbo sealed entry, layout 1
MAC_BYTES = hashlib.sha256().digest_size
OVERHEAD = len(MAGIC) + MAC_BYTES  # bytes a sealed entry adds to the value
SECRET_FILE = "cache.secret"
MIN_SECRET_CHARS = 16


def mac(secret: bytes, kind: str, key: str, data: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over kind, key and bytes (kind and key are short ASCII: checked names)."""
    h = hmac.new(secret, b"zturbo-cache\0" + kind.encode() + b"\0" + key.encode() + b"\0",
                 hashlib.sha256)
    h.update(data)
    return h.digest()


def seal(secret: bytes, kind: str, key: str, data: bytes) -> bytes:
    """The bytes a shared tier stores for ``data`` under (kind, key)."""
    return MAGIC + mac(secret, kind, key, data) + data


def unseal(secret: bytes, kind: str, key: str, stored: bytes) -> bytes | None:
    """The entry's bytes when its MAC verifies for (kind, key); None otherwise."""
    head = OVERHEAD
    if len(stored) < head or not stored.startswith(MAGIC):
        return None
    view = memoryview(stored)[head:]
    if not hmac.compare_digest(stored[len(MAGIC):head], mac(secret, kind, key, view)):
        return None
    return bytes(view)


def cache_secret(configured: str | None = None) -> bytes:
    """The secret of the sealed tiers: ``configured`` (the ``cache_secret`` setting), else
    the one in ``<state dir>/cache.secret``, generated (0600) the first time."""
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise ZTurboError(f"cache_secret is too short: use at least {MIN_SECRET_CHARS} "
                              "random characters (e.g. `openssl rand -hex 32`)")
        return configured.encode()
    path = state_dir() / SECRET_FILE
    try:
        return _secret_file(path)
    except OSError as exc:
        raise ZTurboError(f"cannot read or create the cache secret {path}: {exc} (set "
                          "cache_secret, or turn the disk and Redis tiers off)") from None


def _secret_file(path: Path) -> bytes:
    """The secret stored at ``path``; when absent, a new one is written to a private temp
    file (0600) and linked into place, so no process ever reads a half-written secret and
    two processes racing end up with the same one."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    if len(text) < MIN_SECRET_CHARS:
        raise ZTurboError(f"{path} holds no usable cache secret: delete it (a new one is "
                          "generated) or set cache_secret")
    return text.encode()


class Sealer:
    """One tier's seal: seals what it stores, opens what it reads, counts the entries that
    fail (``forged``) and logs the first one (a replica with another secret would log one
    line per lookup otherwise)."""

    def __init__(self, tier: str, secret: bytes | None = None) -> None:
        self.tier = tier
        self.secret = secret if secret is not None else cache_secret()
        self.forged = 0
        self._lock = threading.Lock()

    def seal(self, kind: str, key: str, data: bytes) -> bytes:
        return seal(self.secret, kind, key, data)

    def open(self, kind: str, key: str, stored: bytes) -> bytes | None:
        data = unseal(self.secret, kind, key, stored)
        if data is None:
            with self._lock:
                self.forged += 1
                first = self.forged == 1
            if first:
                log.warning("%s cache tier: an entry (%s %s...) failed its MAC check: treated as "
                            "a miss. Forged, written under another cache_secret, or older than "
                            "sealed entries; further ones are only counted (stats: forged)",
                            self.tier, kind, key[:12])
        return data
