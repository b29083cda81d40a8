"""The server's record in the state dir (zturbo.server.running): written once the model is in,
removed on shutdown, so ``zturbo generate`` on this machine can reuse the loaded model."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from zturbo.server import running

log = logging.getLogger("zturbo.server")


def announce(settings, fingerprint: str, url: str) -> Path | None:
    """Write this server's record; a failure only costs the reuse, so it is logged."""
    record = running.ServerRecord(
        url=url, pid=os.getpid(), model=settings.model, engine_key=running.engine_key(settings),
        fingerprint=fingerprint, api_key_required=bool(settings.api_key),
        started=time.time())
    try:
        return running.write(record)
    except OSError as exc:
        log.warning("zturbo: cannot write the server record: %s", exc)
        return None


def withdraw(path: Path | None) -> None:
    if path is not None:
        running.remove(path)
