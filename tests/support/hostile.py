"""A hostile stand-in for a zturbo server (a stdlib HTTP server in a thread that answers in
the server's shapes with what a test puts in), and server records for the client tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zturbo.server import engine_identity, running

from serverkit import free_port

JOB = "a" * 32
IMAGE = "b" * 32


@contextlib.contextmanager
def listening():
    """A socket this process listens on: what a server record's pid must hold."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def record(url: str, pid: int | None = None, **fields) -> running.ServerRecord:
    values = dict(url=url, pid=pid or os.getpid(), model="demo", identity={},
                  fingerprint="fp", api_key_required=False, started=time.time())
    return running.ServerRecord(**{**values, **fields})


def own_identity(settings) -> dict:
    """This process's identity parts for ``settings``, as a record holds them."""
    return {name: json.loads(json.dumps(part(), default=str))
            for name, part in engine_identity.client_parts(settings).items()}


def sse(handler, name: str, data) -> None:
    body = data if isinstance(data, str) else json.dumps(data)
    handler.wfile.write(f"event: {name}\ndata: {body}\n\n".encode())
    handler.wfile.flush()


class Hostile(BaseHTTPRequestHandler):
    """Answers like a zturbo server in shape, with what the test puts in ``server.answers``."""

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        answers = self.server.answers
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/ready":
            self._json(200, answers.get("ready", {"ready": True, "fingerprint": "fp"}))
        elif self.path == f"/api/jobs/{JOB}/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                answers["events"](self)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            body = answers.get("png", b"not a png")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json(202, {"id": JOB})


@contextlib.contextmanager
def hostile(**answers):
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hostile)
    server.daemon_threads = True
    server.answers, server.seen = answers, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


def done_with(*images, **more):
    return lambda h: sse(h, "done", {"images": list(images), **more})


def image(seed, image_id=IMAGE):
    return {"id": image_id, "seed": seed, "url": f"/api/images/{image_id}", "teleport": {}}
