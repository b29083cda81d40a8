"""``zturbo generate`` through a running ``zturbo serve``: no model load in the CLI.

``pick`` finds a server: ``--server auto`` a trusted record in the state dir with a model
(any of its engine pool, loaded or not) whose engine identity equals the one this process
would load (zturbo.server.running), whose ``/api/ready`` answers with the record's
fingerprint; the request then names that model; ``--server URL`` that server. The API key is sent
only to a server that requires one.
``run`` submits one Request as a job (``POST /api/jobs``), follows its Server-Sent Events
for the progress bar (within an overall deadline), then fetches each PNG. Every answer is
checked before it is used: ids of the expected shape, one image per requested seed and no
other seed, PNG bytes that hold this request's seed and the server's fingerprint.
Anything that means "no usable server" (none, busy, loading, unreachable, refused, a
malformed answer) raises ``Unavailable`` with one line: ``--server auto`` then loads the
model here; a named ``--server URL`` fails.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from zturbo.config import Request, Settings
from zturbo.config.metadata import read as read_png
from zturbo.errors import ZTurboError
from zturbo.server import running

CONNECT_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 5.0  # a loaded machine may take seconds to answer
READ_TIMEOUT_S = 60.0  # silence this long ends a stream (the server pings every 15 s)
STREAM_GRACE_S = 30.0  # past the server's own job limit, the client waits at most this
MAX_EVENT_BYTES = 16 << 20  # one event line (a preview is a data URL)
MAX_PNG_BYTES = 512 << 20
MAX_ANSWER_BYTES = 1 << 20  # any other answer (ready, a submitted job)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEX32 = re.compile(r"[0-9a-f]{32}")


class Unavailable(Exception):
    """No usable server, or an answer that can't be used: one line saying why."""


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    fingerprint: str | None = None  # its record's: every image must carry it (None: named)
    model: str | None = None  # the model of its pool the request names (None: its default)
    pid: int | None = None  # a recorded server's: its record names the model's fingerprint


@dataclass
class RemoteImage:
    seed: int
    png: bytes
    teleport: dict[str, Any]
    request: dict[str, Any] = field(default_factory=dict)  # the request that ran


@dataclass
class RemoteResult:
    images: list[RemoteImage]
    timings: dict[str, float]
    job_id: str
    warnings: list[str] = field(default_factory=list)


def deadline_s(settings: Settings) -> float:
    """How long the client follows one job: the server's job limit (queue wait included),
    then as long again, at most STREAM_GRACE_S more, for its final event."""
    return settings.request_timeout_s + min(settings.request_timeout_s, STREAM_GRACE_S)


def plain(text: str, limit: int = 200) -> str:
    """Server-supplied text as one printable line (no escapes, no newlines), cut."""
    return "".join(c if c.isprintable() else " " for c in text[:limit])


def _key(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}


def _readiness(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """``/api/ready``'s status and JSON body (None when it is not JSON)."""
    timeout = httpx.Timeout(READY_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with httpx.Client(headers=headers, timeout=timeout) as client:
        status, data, _ = _exchange(client, "GET", f"{url}/api/ready", url)
    return status, data


def _exchange(client: httpx.Client, method: str, url: str, server: str,
              **kwargs: Any) -> tuple[int, Any, str]:
    """One small request: the answer's status, JSON body (None when it is not JSON) and
    the start of its text; at most MAX_ANSWER_BYTES are read."""
    try:
        with client.stream(method, url, **kwargs) as answer:
            body = _capped(answer, MAX_ANSWER_BYTES, url)
    except httpx.HTTPError as exc:
        raise Unavailable(f"{server} is unreachable ({type(exc).__name__})") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        data = None
    return answer.status_code, data, plain(body[:200].decode("utf-8", errors="replace"))


def _capped(answer: httpx.Response, limit: int, url: str) -> bytes:
    data = b""
    for chunk in answer.iter_bytes():
        data += chunk
        if len(data) > limit:
            raise Unavailable(f"{url} answered more than {limit >> 20} MiB")
    return data


def _ready_fingerprint(url: str, status: int, body: Any) -> str:
    """The fingerprint of a ready server, or Unavailable saying why it is not."""
    if status == 200 and isinstance(body, dict) and body.get("ready") is True:
        fingerprint = body.get("fingerprint")
        if isinstance(fingerprint, str) and 0 < len(fingerprint) <= 256:
            return fingerprint
        raise Unavailable(f"{url} gave a malformed /api/ready answer (no fingerprint)")
    reason = body.get("error") if isinstance(body, dict) else None
    if status == 200:
        raise Unavailable(f"{url} gave a malformed /api/ready answer")
    if status == 401:
        raise Unavailable(f"{url} refused the API key")
    detail = plain(reason) if isinstance(reason, str) else f"answered {status}"
    raise Unavailable(f"{url} is not ready ({detail})")


def named(settings: Settings) -> Server:
    """The server the user named (``--server URL``), ready. The key goes only where the
    server asks for one (a 401 without it)."""
    url = settings.server.rstrip("/")
    status, body = _readiness(url, {})
    headers: dict[str, str] = {}
    if status == 401:
        if not settings.api_key:
            raise Unavailable(f"{url} requires an API key (set ZTURBO_API_KEY)")
        headers = _key(settings)
        status, body = _readiness(url, headers)
    _ready_fingerprint(url, status, body)  # ready, and a well-formed answer
    return Server(url, headers)  # its images' engine is not checked: the user vouches for it


def _recorded(match: running.Match, settings: Settings) -> Server:
    """A recorded server, ready with the record's fingerprint, or Unavailable."""
    record = match.record
    headers = _key(settings) if record.api_key_required else {}
    if record.api_key_required and not headers:
        raise Unavailable(f"{record.url} requires an API key (set ZTURBO_API_KEY)")
    fingerprint = _ready_fingerprint(record.url, *_readiness(record.url, headers))
    if fingerprint != record.fingerprint:
        raise Unavailable(f"{record.url} answers with another fingerprint than its record")
    if match.name is None:
        return Server(record.url, headers, fingerprint, pid=record.pid)
    return Server(record.url, headers, match.fingerprint, match.name, record.pid)


def pick(settings: Settings) -> Server | None:
    """A ready server for these settings, or None when there is none to ask (then the CLI
    loads the model). Unavailable: a named ``--server URL``, or every recorded server with
    this engine, can't be used (the first reason)."""
    if settings.server == "off":
        return None
    if settings.server != "auto":
        return named(settings)
    reasons = []
    for match in running.matching(settings):
        try:
            return _recorded(match, settings)
        except Unavailable as exc:
            reasons.append(str(exc))
    if reasons:
        raise Unavailable(reasons[0])
    return None


def _submit(client: httpx.Client, server: Server, request: Request) -> str:
    body = request.model_dump(mode="json")
    if server.model is not None:
        body["model"] = server.model
    status, data, text = _exchange(client, "POST", f"{server.url}/api/jobs", server.url,
                                   json=body)
    if status == 202:
        job_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(job_id, str) or not HEX32.fullmatch(job_id):
            raise Unavailable(f"{server.url} gave a malformed answer to POST /api/jobs "
                              f"(no job id)")
        return job_id
    reason = {429: "busy (queue full)", 503: "not ready", 401: "refused the API key"}.get(
        status, f"answered {status}: {_said(data, text)}")
    raise Unavailable(f"{server.url} {reason}")


def _said(data: Any, text: str) -> str:
    """The message of an error answer (the API's error shape), else its text."""
    try:
        return plain(str(data["error"]["message"]))
    except (KeyError, TypeError):
        return text


def events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` pairs from Server-Sent Events lines; data that is not JSON is
    Unavailable."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                try:
                    yield name, json.loads("\n".join(data))
                except (ValueError, RecursionError):
                    raise Unavailable(f"malformed {name!r} event (not JSON)") from None
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())


def lines(chunks: Iterator[bytes], deadline: float) -> Iterator[str]:
    """Text lines from a byte stream, until ``deadline`` (``time.monotonic()``); a line
    longer than MAX_EVENT_BYTES or a stream past the deadline is Unavailable."""
    buffer = b""
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise Unavailable("the event stream outlasted the job's time limit")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_EVENT_BYTES:
            raise Unavailable("an event larger than the limit")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31


def _follow(client: httpx.Client, server: Server, job_id: str, deadline_s: float,
            on_step: Callable[[int, int], None]) -> Any:
    """The job's ``done`` data; progress goes to ``on_step(done, total)``."""
    deadline = time.monotonic() + deadline_s
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=min(READ_TIMEOUT_S, deadline_s))
    with client.stream("GET", f"{server.url}/api/jobs/{job_id}/events",
                       timeout=timeout) as stream:
        if stream.status_code != 200:
            raise Unavailable(f"answered {stream.status_code} for the job's events")
        for name, data in events(lines(stream.iter_bytes(), deadline)):
            if name == "step":
                if not (isinstance(data, dict) and _count(data.get("step"))
                        and _count(data.get("total"))):
                    raise Unavailable("malformed 'step' event")
                on_step(data["step"], data["total"])
            elif name == "done":
                return data
            elif name in ("error", "cancelled"):
                said = data.get("message") or data.get("reason") if isinstance(data, dict) else None
                raise ZTurboError(f"the server ({server.url}) says: {plain(str(said), 500)}")
    raise Unavailable("the event stream ended before the job did")


@dataclass(frozen=True)
class Done:
    """A checked ``done`` event: one image per requested seed."""

    images: list[dict[str, Any]]  # id, seed, teleport, request (its prompt texts only)
    timings: dict[str, float]
    warnings: list[str]


def check_done(data: Any, request: Request) -> Done:
    """The ``done`` data, checked against the request; anything else is Unavailable."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise Unavailable("malformed 'done' event (no images)")
    expected, images = request.seeds(), []
    for image in data["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("id"), str) \
                or not HEX32.fullmatch(image["id"]):
            raise Unavailable("malformed 'done' event (an image without a valid id)")
        seed = image.get("seed")
        if not _count_seed(seed) or seed not in expected:
            raise Unavailable(f"malformed 'done' event (seed {json.dumps(seed)[:40]} is not "
                              f"one of the request's seeds)")
        teleport = image.get("teleport") or {}
        if not isinstance(teleport, dict):
            raise Unavailable("malformed 'done' event (teleport is not an object)")
        ran = image.get("request") if isinstance(image.get("request"), dict) else {}
        texts = {k: ran[k] for k in ("prompt", "original_prompt") if isinstance(ran.get(k), str)}
        images.append({"id": image["id"], "seed": seed, "teleport": teleport, "request": texts})
    if sorted(i["seed"] for i in images) != sorted(expected):
        raise Unavailable(f"malformed 'done' event ({len(images)} image(s) for "
                          f"{len(expected)} seed(s))")
    timings = data.get("timings", {})
    warnings = data.get("warnings", [])
    if not isinstance(timings, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in timings.values()):
        raise Unavailable("malformed 'done' event (timings)")
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise Unavailable("malformed 'done' event (warnings)")
    return Done(images, {str(k): float(v) for k, v in timings.items()},
                [plain(w, 500) for w in warnings[:20]])


def _count_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fetch(client: httpx.Client, url: str) -> bytes:
    try:
        with client.stream("GET", url) as answer:
            if answer.status_code != 200:
                raise Unavailable(f"cannot fetch {url}: answered {answer.status_code}")
            return _capped(answer, MAX_PNG_BYTES, url)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot fetch {url} ({type(exc).__name__})") from None


def check_png(png: bytes, seed: int, fingerprint: str | None, url: str) -> None:
    """PNG bytes that hold this seed's request and the server's fingerprint."""
    if not png.startswith(PNG_SIGNATURE):
        raise Unavailable(f"{url} is not a PNG")
    try:
        stored = read_png(io.BytesIO(png), url)
    except (ZTurboError, ValueError, TypeError, KeyError):
        raise Unavailable(f"{url} is not a readable PNG") from None
    request = stored.get("request")
    if not isinstance(request, dict) or request.get("seed") != seed:
        raise Unavailable(f"{url} does not hold the parameters of seed {seed}")
    if fingerprint is not None and stored.get("fingerprint") != fingerprint:
        raise Unavailable(f"{url} was made by another engine than the server's")


def loaded_fingerprint(server: Server) -> str:
    """The fingerprint a recorded server's record names for ``server.model`` now that it
    loaded it (the record is written again on every load), or Unavailable."""
    for record in running.live_records():
        if record.pid == server.pid and record.url == server.url:
            for name, _, fingerprint in record.entries():
                if name == server.model and fingerprint:
                    return fingerprint
    raise Unavailable(f"{server.url} does not record the fingerprint of its model "
                      f"{server.model!r}")


def run(server: Server, request: Request, on_step: Callable[[int, int], None],
        deadline_s: float) -> RemoteResult:
    """Generate ``request`` on ``server``: the PNG bytes, timings and teleport per image,
    each checked; the whole job within ``deadline_s``.

    Ctrl-C cancels the job on the server before it propagates."""
    with httpx.Client(headers=server.headers, timeout=CONNECT_TIMEOUT_S * 10) as client:
        job_id = _submit(client, server, request)
        try:
            done = check_done(_follow(client, server, job_id, deadline_s, on_step), request)
        except Unavailable as exc:
            raise Unavailable(f"{server.url}: {exc}") from None
        except KeyboardInterrupt:
            client.post(f"{server.url}/api/jobs/{job_id}/cancel")
            raise
        except httpx.HTTPError as exc:
            raise Unavailable(f"lost {server.url} during job {job_id} "
                              f"({type(exc).__name__})") from None
        if server.pid is not None and server.fingerprint is None:
            server.fingerprint = loaded_fingerprint(server)  # the model loaded for this job
        images = []
        for image in done.images:  # the URL is built here: never one the server names
            url = f"{server.url}/api/images/{image['id']}"
            png = _fetch(client, url)
            check_png(png, image["seed"], server.fingerprint, url)
            images.append(RemoteImage(image["seed"], png, image["teleport"], image["request"]))
    return RemoteResult(images, done.timings, job_id, done.warnings)
