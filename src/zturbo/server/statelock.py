"""One server per state dir: an exclusive ``fcntl.flock`` on ``<state>/server/server.lock``.

Two servers on one state dir would rewrite each other's job records (each marks the
other's unfinished jobs as interrupted at start-up and shutdown). The lock is taken before
the history database is opened; the OS drops it when the holder exits, crash or kill -9
included, so a stale lock file never blocks a restart. The file holds the holder's pid and
URL (JSON) so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from zturbo.errors import ZTurboError
from zturbo.paths import state_dir


def server_url(settings) -> str:
    """The URL a server announces (in its lock file, so a refusal can name it)."""
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def lock_path() -> Path:
    return state_dir() / "server" / "server.lock"


class StateDirBusy(ZTurboError):
    """Another live server holds the state dir."""


class StateLock:
    """The state dir's server lock; ``acquire`` raises StateDirBusy naming the holder."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or lock_path()
        self._fd: int | None = None

    def acquire(self, url: str) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirBusy(
                f"another zturbo server (pid {holder.get('pid', '?')}, "
                f"{holder.get('url', 'url unknown')}) already serves the state dir "
                f"{self.path.parent.parent}: stop it, or give this server its own ZTURBO_HOME"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "url": url}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(fd: int) -> dict:
    """What the holder wrote: ``{"pid", "url"}`` ({} while it is still writing)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
