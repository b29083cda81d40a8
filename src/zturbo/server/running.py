"""Records of the ``zturbo serve`` processes running on this machine, in the state dir.

A server writes ``<state>/servers/<pid>-<port>.json`` once its model is loaded and removes
it on shutdown (or when a file it loaded changes on disk); ``zturbo generate`` reads them to
send its request to a server that holds the same engine instead of loading it again. "The
same engine" is decided by identity, not by settings: the record carries the engine's
identity parts, and the client compares them with its own (zturbo.server.engine_identity).

A record is trusted only when it is the user's own regular file, not group- or
world-writable, its URL is loopback and its port is held by its pid (``trusted``). A record
of a dead process is removed when seen.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zturbo.config import Settings, state_dir
from zturbo.server.engine_identity import client_parts, same_identity


@dataclass(frozen=True)
class ServerRecord:
    url: str
    pid: int
    model: str
    identity: dict[str, Any]
    fingerprint: str
    api_key_required: bool
    started: float
    # the pool's other models: {"name", "identity", "fingerprint" (None: not loaded yet)}
    models: list[dict[str, Any]] = field(default_factory=list)

    def entries(self) -> list[tuple[str | None, dict[str, Any], str | None]]:
        """``(name, identity, fingerprint)`` of every model it serves, the default first
        (name None: a request without a model gets it)."""
        return [(None, self.identity, self.fingerprint or None),
                *((m["name"], m["identity"], m["fingerprint"]) for m in self.models)]


_FIELD_TYPES = {"url": str, "pid": int, "model": str, "identity": dict, "fingerprint": str,
                "api_key_required": bool, "started": (int, float), "models": list}
_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {"name": str, "identity": dict,
                                                   "fingerprint": (str, type(None))}


def servers_dir() -> Path:
    return state_dir() / "servers"


def client_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to ``host``."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(record: ServerRecord) -> Path:
    """Write the record atomically (a reader never sees half of it), readable by the user
    only, in a folder only the user can write."""
    folder = servers_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        port = urlsplit(record.url).port
    except ValueError:
        port = None
    path = folder / f"{record.pid}-{port or 0}.json"
    fd, tmp = tempfile.mkstemp(prefix=".server-", suffix=".json", dir=folder)  # mode 0600
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
    except PermissionError:  # another user's process: alive (and not trusted: see holds_port)
        return True
    return True


def _ownership(path: Path) -> str | None:
    """``"own"``: the user's own regular file (not a link) that no one else may write;
    ``"writable"``: the user's own, but group- or world-writable; None: not the user's."""
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return None
    return "writable" if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else "own"


def _parse(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or set(data) != set(_FIELD_TYPES):
        return None
    for name, kind in _FIELD_TYPES.items():
        value = data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return None
    if not all(_entry(m) for m in data["models"]):
        return None
    return ServerRecord(**data) if data["pid"] > 0 else None


def _entry(model: Any) -> bool:
    """One of a record's ``models``: exactly its fields, of their types."""
    return isinstance(model, dict) and set(model) == set(_ENTRY_TYPES) and all(
        isinstance(model[k], kind) for k, kind in _ENTRY_TYPES.items())


def loopback_port(url: str) -> int | None:
    """The port of an ``http://`` URL on a loopback address, else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    if parts.scheme != "http" or not loopback or parts.username or parts.password:
        return None
    return port if port and parts.path in ("", "/") and not parts.query else None


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (from /proc/net), or None where /proc can't say."""
    inodes, seen = set(), False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])  # 0A: LISTEN
    return inodes if seen else None


def holds_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` listens on ``port``: its open sockets in /proc, or psutil
    where there is no /proc; False when neither can tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return _holds_port_psutil(pid, port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's process
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _holds_port_psutil(pid: int, port: int) -> bool:
    try:
        import psutil  # optional: only where /proc is missing
    except ImportError:
        return False
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="inet"))
    except (psutil.Error, OSError):
        return False


def trusted(record: ServerRecord) -> bool:
    """A loopback URL whose port the record's process holds."""
    port = loopback_port(record.url)
    return port is not None and holds_port(record.pid, port)


def live_records() -> list[ServerRecord]:
    """Trusted records of running servers, newest first. Records of dead processes are
    removed; records that fail a check (another user's or writable file, a URL off this
    machine, a port the pid does not hold, a malformed file) are skipped."""
    records = []
    folder = servers_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        ownership = _ownership(path)
        record = _parse(path) if ownership else None
        if record is None:
            continue
        if not alive(record.pid):
            remove(path)
        elif ownership == "own" and trusted(record):
            records.append(record)
    return sorted(records, key=lambda r: r.started, reverse=True)


@dataclass(frozen=True)
class Match:
    """A running server and the model of its pool whose engine is the one ``settings`` make
    here (``name`` None: its default model)."""

    record: ServerRecord
    name: str | None
    fingerprint: str | None  # that engine's, once the server loaded it


def matching(settings: Settings) -> list[Match]:
    """Trusted running servers with a model (loaded or not) whose engine identity equals
    the one ``settings`` make here, newest first; each server's first such model."""
    parts, known = client_parts(settings), {}
    found = []
    for record in live_records():
        for name, identity, fingerprint in record.entries():
            if same_identity(identity, parts, known):
                found.append(Match(record, name, fingerprint))
                break
    return found
