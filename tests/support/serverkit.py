"""Helpers for the server tests: an app on the session's demo engine, a real uvicorn server
on a free loopback port, and a gate that holds the DiT at a chosen pass (a forward
pre-hook on the real transformer, so cancel and shutdown tests are deterministic), and the
headless Chromium the browser tests drive."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from zturbo.config import load_settings
from zturbo.server import create_app

SMALL = {"width": 64, "height": 64, "steps": 2}
AXE = Path(__file__).parents[1] / "vendor" / "axe.min.js"
ARTIFACTS = Path(__file__).parents[1] / "artifacts"  # screenshots (git-ignored)
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}

# Debian's chromium (scripts/system-deps installs it), driven by Playwright in browser tests
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-quic", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (scripts/system-deps installs it)")


def launch_chromium(playwright):
    """A headless Chromium for one test module or test (close it when done)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      headless=True)


def axe_violations(page) -> list[dict]:
    """axe-core's violations on the page (axe injected from tests/vendor, never fetched)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]} for v in result["violations"]]


def check_axe(page, where: str) -> list[dict]:
    """No serious or critical axe violation; the lesser ones are printed."""
    found = axe_violations(page)
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe at {where}: {json.dumps(bad, indent=1)}"
    print(f"axe at {where}: {len(found)} violation(s) below serious: "
          f"{[(v['id'], v['impact']) for v in found]}")
    return found


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """Save a screenshot to tests/artifacts/NAME.png and print its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def settings(**flags):
    return load_settings(flags={"model": "demo", "width": 64, "height": 64, "steps": 2,
                                **flags})[0]


def app_for(engine, **flags):
    return create_app(settings(**flags), engine=engine)


def sse(client, job_id):
    """The (event, data) pairs of a job's event stream, until it ends."""
    out = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Gate:
    """Blocks the transformer's ``at``-th forward pass until ``release()``."""

    def __init__(self, engine, at: int = 2) -> None:
        self.calls, self.at = 0, at
        self.reached, self.go = threading.Event(), threading.Event()
        self._handle = engine.pipe.transformer.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            if not self.go.wait(60):
                raise RuntimeError("gate never released")

    def wait(self, timeout: float = 60.0) -> None:
        assert self.reached.wait(timeout), "the DiT never reached the gate"

    def release(self) -> None:
        self.go.set()

    def remove(self) -> None:
        self.go.set()
        self._handle.remove()


@contextlib.contextmanager
def gate(engine, at: int = 2):
    g = Gate(engine, at)
    try:
        yield g
    finally:
        g.remove()


@contextlib.contextmanager
def one_thread():
    """Torch on one thread: on a shared 2-core box, 2 threads per process contend badly."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, headers: dict | None = None, port: int | None = None):
    """A real uvicorn server on a free 127.0.0.1 port (or ``port``: a server started again
    where a stopped one was), in a thread; yields its base URL. ``headers`` go with the
    readiness check (an API key)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base, headers), 60, "the server to be ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def announced_server(engine, **flags):
    """``live_server`` for an app that records itself in the state dir as ``zturbo serve``
    does; yields its URL once the record is there."""
    from zturbo.server import running

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings(**flags), engine=engine, announce=url)
    with live_server(app, port=port):
        wait_for(lambda: any(r.url == url for r in running.live_records()), 30,
                 "the server's record")
        yield url


def _ready(base: str, headers: dict | None = None) -> bool:
    try:
        return httpx.get(base + "/api/ready", headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def processes_naming(text: str) -> list[str]:
    """Command lines (what ``ps`` shows, read untruncated from /proc) containing ``text``:
    Ray's processes all name their temp dir."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process exited meanwhile
            continue
        if text in args:
            found.append(f"{cmdline.parent.name} {args[:200]}")
    return found


def post_json(client, path: str, body: dict):
    """POST JSON text as Python's json writes it (a lone surrogate as its escape, NaN as the
    bare token), which a client library would refuse to send."""
    return client.post(path, content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})


def error_of(r, status: int) -> str:
    """The message of an error answer of ``status``, in the server's one error shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code"}, body
    return body["error"]["message"]
