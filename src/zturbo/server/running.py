"""Records of the ``zturbo serve`` processes running on this machine, in the state dir.

A server writes ``<state>/servers/<pid>-<port>.json`` once its model is loaded and removes
it on shutdown; ``zturbo generate`` reads them to send its request to a server that holds
the same model instead of loading it again. A record of a dead process (a server that was
killed) is ignored and removed.

Whether a server holds "the same model" is decided before anything is loaded, from the
settings that build the engine (``engine_key``): weights, dtype, device, LoRAs, single-file
transformer, placement, speed levers, and the teleport resume points. A local file in
those settings is named by absolute path, size and modification time, so another file
under the same relative name never matches. The record also carries the loaded engine's
fingerprint, which the client reports.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from zturbo.config import Settings, state_dir
from zturbo.config.engine_identity import engine_key


@dataclass(frozen=True)
class ServerRecord:
    url: str
    pid: int
    model: str
    engine_key: str
    fingerprint: str
    api_key_required: bool
    started: float


def servers_dir() -> Path:
    return state_dir() / "servers"


def client_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to ``host``."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(record: ServerRecord) -> Path:
    """Write the record atomically (a reader never sees half of it)."""
    folder = servers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.pid}-{record.url.rsplit(':', 1)[-1]}.json"
    fd, tmp = tempfile.mkstemp(prefix=".server-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)
    return path


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def live_records() -> list[ServerRecord]:
    """Records of running servers, newest first; records of dead processes are removed."""
    records = []
    for path in sorted(servers_dir().glob("*.json")):
        try:
            record = ServerRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being written or not ours: skip
        if alive(record.pid):
            records.append(record)
        else:
            remove(path)
    return sorted(records, key=lambda r: r.started, reverse=True)


def matching(settings: Settings) -> list[ServerRecord]:
    """Running servers that hold the engine these settings would load."""
    key = engine_key(settings)
    return [r for r in live_records() if r.engine_key == key]
