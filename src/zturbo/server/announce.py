"""The server's record in the state dir (zturbo.server.running): written once the model is in,
removed on shutdown, so ``zturbo generate`` on this machine can reuse the loaded engine.

The record carries the loaded engine's identity parts. While it stands, the server checks
the files it loaded (the model folder, the single-file transformer, the LoRAs) every
``RECHECK_S`` seconds and withdraws the record when one changed on disk: its engine is no
longer what a client would load from those files."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from zturbo.server import engine_identity as parts
from zturbo.server import running

log = logging.getLogger("zturbo.server")
RECHECK_S = 2.0


def engine_identity(settings, engine) -> dict[str, Any]:
    """The identity parts of the loaded engine, as a client computes them for itself. The
    files part is read from disk as a client reads it (fused LoRAs by file sha256: a client
    compares files without converting them), and only when its weights are the ones the
    engine loaded; otherwise no client can match it."""
    files = parts.file_parts(settings)
    if files is not None and files["weights"] != dict(engine.identity):
        files = None  # changed on disk since the load
    return {
        "settings": parts.settings_key(settings),
        "versions": parts.versions(),
        "files": files,
        "numerics": parts.numerics(settings),  # read in this process, as a client does
    }


def announce(settings, identity: dict[str, Any], fingerprint: str, url: str) -> Path | None:
    """Write this server's record; a failure only costs the reuse, so it is logged."""
    record = running.ServerRecord(
        url=url, pid=os.getpid(), model=settings.model, identity=identity,
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


async def watch(settings, files: dict[str, Any], path: Path) -> None:
    """Withdraw the record at ``path`` once the files it names differ from ``files``."""
    while True:
        await asyncio.sleep(RECHECK_S)
        now = await asyncio.to_thread(parts.file_parts, settings)
        if now != files:
            withdraw(path)
            log.warning("zturbo: a model or LoRA file changed on disk since it was loaded; "
                        "`zturbo generate` no longer sends its requests here")
            return
