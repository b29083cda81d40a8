"""The server's record in the state dir (zturbo.server.running): written once the default
model is in, removed on shutdown, so ``zturbo generate`` on this machine can reuse the
server's engines.

The record carries the identity parts of every model of the engine pool, loaded or not
(the default's at the top, the others in ``models``), and the fingerprint of each model
loaded so far (an engine's fingerprint is the same at every load of the same files and
settings); it is written again whenever a model loads or is evicted. While it stands, the server checks
the files each model names (its folder, its single-file transformer, its LoRAs) every
``RECHECK_S`` seconds and withdraws the record when one changed on disk: an engine from
those files is no longer what a client would load."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from zturbo.server import engine_identity as parts
from zturbo.server import running

log = logging.getLogger("zturbo.server")
RECHECK_S = 2.0


def engine_identity(settings, engine=None) -> dict[str, Any]:
    """The identity parts of the engine ``settings`` make, as a client computes them for
    itself. The files part is read from disk as a client reads it (fused LoRAs by file
    sha256: a client compares files without converting them); for a loaded ``engine`` only
    when its weights are the ones it loaded, otherwise no client can match it."""
    files = parts.file_parts(settings)
    if files is not None and engine is not None and files["weights"] != dict(engine.identity):
        files = None  # changed on disk since the load
    return {
        "settings": parts.settings_key(settings),
        "versions": parts.versions(),
        "files": files,
        "numerics": parts.numerics(settings),  # read in this process, as a client does
    }


def fingerprint_of(engine) -> str:
    """The engine's fingerprint, read under its lock (extras change only under it)."""
    with engine.lock:
        return engine.fingerprint


class Announcer:
    """This server's record: every pool model's identity (computed once, at start) and the
    fingerprints of the models loaded so far (rewritten on each load and eviction)."""

    def __init__(self, settings, pool, url: str) -> None:
        self.settings, self.pool, self.url = settings, pool, url
        self.identities: dict[str, dict[str, Any]] = {}
        self.fingerprints: dict[str, str] = {}
        self.path: Path | None = None
        self.started = time.time()
        self._lock = threading.Lock()
        self._withdrawn = False

    def start(self) -> Path | None:
        """Compute every model's identity and write the record (blocking: in a thread)."""
        self.identities = {name: engine_identity(self.pool.settings_of(name),
                                                 self.pool.peek(name))
                           for name in self.pool.names()}
        self.pool.on_change(self.write)
        self.write()
        return self.path

    def write(self) -> None:
        """Write the record as the pool stands now; a failure only costs the reuse."""
        with self._lock:
            if self._withdrawn or not self.identities:
                return
            self._complete()
            default, *others = self.pool.names()
            record = running.ServerRecord(
                url=self.url, pid=os.getpid(), model=self.pool.settings_of(default).model,
                identity=self.identities[default], fingerprint=self._fingerprint(default) or "",
                api_key_required=bool(self.settings.api_key), started=self.started,
                models=[{"name": name, "identity": self.identities[name],
                         "fingerprint": self._fingerprint(name)} for name in others])
            try:
                self.path = running.write(record)
            except OSError as exc:
                log.warning("zturbo: cannot write the server record: %s", exc)

    def _complete(self) -> None:
        """A model whose files could not be named at start (a Hub snapshot or a demo folder
        not there yet) is named once it loaded: its files are on disk now."""
        for name, identity in self.identities.items():
            engine = self.pool.peek(name)
            if identity["files"] is None and engine is not None:
                self.identities[name] = engine_identity(self.pool.settings_of(name), engine)

    def _fingerprint(self, name: str) -> str | None:
        engine = self.pool.peek(name)
        if engine is not None and name not in self.fingerprints:
            self.fingerprints[name] = fingerprint_of(engine)
        return self.fingerprints.get(name)

    def withdraw(self) -> None:
        with self._lock:
            self._withdrawn = True
            if self.path is not None:
                running.remove(self.path)

    def files(self) -> dict[str, Any]:
        """Every model's files part, as the record holds it."""
        with self._lock:
            return {name: identity["files"] for name, identity in self.identities.items()}

    async def watch(self) -> None:
        """Withdraw the record once a file a model names differs from what was recorded."""
        while True:
            await asyncio.sleep(RECHECK_S)
            recorded = self.files()  # a model not named by its files matches no client
            now = await asyncio.to_thread(self._files_now, [n for n, f in recorded.items() if f])
            if now != {n: f for n, f in recorded.items() if f}:
                self.withdraw()
                log.warning("zturbo: a model or LoRA file changed on disk since it was "
                            "recorded; `zturbo generate` no longer sends its requests here")
                return

    def _files_now(self, names: list[str]) -> dict[str, Any]:
        return {name: parts.file_parts(self.pool.settings_of(name)) for name in names}


def withdraw(announcer: Announcer | None) -> None:
    if announcer is not None:
        announcer.withdraw()
