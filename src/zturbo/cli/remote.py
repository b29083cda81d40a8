"""``zturbo generate`` through a running ``zturbo serve``: no model load in the CLI.

``pick`` finds a server (``--server auto``: a record in the state dir with the same
engine, see zturbo.server.running; ``--server URL``: that one) and checks it is ready.
``run`` submits one Request as a job (``POST /api/jobs``), follows its Server-Sent Events
for the progress bar, then fetches each PNG: the bytes the server wrote, with the same
metadata a local run writes. Anything that means "no server right now" (none, busy with a
full queue, loading, unreachable, refused) raises ``Unavailable``, and the CLI loads the
model itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from zturbo.config import Request, Settings
from zturbo.errors import ZTurboError
from zturbo.server import running

CONNECT_TIMEOUT_S = 1.0


class Unavailable(Exception):
    """No usable server: the reason is shown, then the CLI runs the request itself."""


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    fingerprint: str | None = None


@dataclass
class RemoteImage:
    seed: int
    png: bytes
    teleport: dict[str, Any]


@dataclass
class RemoteResult:
    images: list[RemoteImage]
    timings: dict[str, float]
    job_id: str
    warnings: list[str] = field(default_factory=list)


def _headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}


def _candidates(settings: Settings) -> list[Server]:
    if settings.server == "off":
        return []
    if settings.server != "auto":
        return [Server(settings.server.rstrip("/"), _headers(settings))]
    servers = []
    for record in running.matching(settings):
        if record.api_key_required and not settings.api_key:
            continue  # it would answer 401: not ours to use
        servers.append(Server(record.url, _headers(settings), record.fingerprint))
    return servers


def _ready(server: Server) -> bool:
    try:
        answer = httpx.get(f"{server.url}/api/ready", headers=server.headers,
                           timeout=CONNECT_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


def pick(settings: Settings) -> Server | None:
    """A ready server for these settings, or None (then the CLI loads the model)."""
    return next((s for s in _candidates(settings) if _ready(s)), None)


def _submit(client: httpx.Client, server: Server, request: Request) -> str:
    body = request.model_dump(mode="json")
    try:
        answer = client.post(f"{server.url}/api/jobs", json=body)
    except httpx.HTTPError as exc:
        raise Unavailable(f"{server.url} unreachable ({type(exc).__name__})") from None
    if answer.status_code == 202:
        return answer.json()["id"]
    reason = {429: "busy (queue full)", 503: "not ready", 401: "refused the API key"}.get(
        answer.status_code, f"answered {answer.status_code}: {_message(answer)}")
    raise Unavailable(f"{server.url} {reason}")


def _message(answer: httpx.Response) -> str:
    try:
        return answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return answer.text[:200]


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs from Server-Sent Events lines."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())


def _follow(client: httpx.Client, server: Server, job_id: str,
            on_step: Callable[[int, int], None]) -> dict[str, Any]:
    """The job's ``done`` data; progress goes to ``on_step(done, total)``."""
    with client.stream("GET", f"{server.url}/api/jobs/{job_id}/events",
                       timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=None)) as stream:
        for name, data in events(stream.iter_lines()):
            if name == "step":
                on_step(data["step"], data["total"])
            elif name == "done":
                return data
            elif name in ("error", "cancelled"):
                raise ZTurboError(f"the server ({server.url}) says: "
                                  f"{data.get('message') or data.get('reason')}")
    raise Unavailable(f"{server.url} closed the event stream")


def _fetch(client: httpx.Client, url: str) -> bytes:
    try:
        answer = client.get(url)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot fetch {url} ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise Unavailable(f"cannot fetch {url}: {answer.status_code} {_message(answer)}")
    return answer.content


def run(server: Server, request: Request, on_step: Callable[[int, int], None]) -> RemoteResult:
    """Generate ``request`` on ``server``: the PNG bytes, timings and teleport per image.

    Ctrl-C cancels the job on the server before it propagates."""
    with httpx.Client(headers=server.headers, timeout=CONNECT_TIMEOUT_S * 10) as client:
        job_id = _submit(client, server, request)
        try:
            done = _follow(client, server, job_id, on_step)
        except KeyboardInterrupt:
            client.post(f"{server.url}/api/jobs/{job_id}/cancel")
            raise
        except httpx.HTTPError as exc:
            raise Unavailable(f"lost {server.url} during job {job_id} ({exc})") from None
        images = [RemoteImage(image["seed"], _fetch(client, server.url + image["url"]),
                              image.get("teleport") or {}) for image in done["images"]]
    return RemoteResult(images, done.get("timings", {}), job_id, done.get("warnings", []))
