"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

It keeps nothing (no RDB, no AOF) and lives in a folder of its own. ``pause``/``resume``
(SIGSTOP/SIGCONT) make it hang like an overloaded server: the connection opens, replies
never come.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


class LocalRedis:
    """``with LocalRedis(tmp) as server: server.url``."""

    def __init__(self, workdir: Path, port: int | None = None,
                 config: dict[str, str] | None = None) -> None:
        """``config``: more redis-server settings, e.g. ``{"maxmemory-policy": "allkeys-lru"}``."""
        self.workdir = Path(workdir)
        self.config = dict(config or {})
        self.port = port or free_port()
        self._pick_port = port is None  # a port we picked may be taken before we bind it
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait_s: float = 10.0) -> LocalRedis:
        for attempt in range(3 if self._pick_port else 1):
            try:
                return self._start(wait_s)
            except RuntimeError:
                if attempt == 2 or not self._pick_port:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, wait_s: float) -> LocalRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found: apt-get install redis-server "
                                    "(scripts/system-deps does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log"),
             *[arg for name, value in self.config.items() for arg in (f"--{name}", value)]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.RedisError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.workdir / "redis.log"
                    tail = log.read_text()[-500:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.port}: {tail}")
                time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server: clients connect but time out waiting for replies."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.resume()  # a stopped process can't act on SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
