"""A bounded fuzz run over every route: schemathesis generates requests from the app's own
OpenAPI schema and sends them in-process (ASGI) to a server on the demo engine with small
limits. No answer may be a 5xx, and every answer must match the schema (status codes
declared, bodies in the declared shape, content types declared).

``/mcp`` (JSON-RPC, not in the OpenAPI schema) gets its own run: hypothesis posts malformed
and half-valid JSON-RPC bodies (bad JSON, batches, wrong versions, unknown methods, tool
calls with random arguments, stray session ids and protocol versions). No 5xx, and the
server still answers a handshake and its readiness afterwards.

``make fuzz`` runs the same test longer (``FUZZ_EXAMPLES``) and prints the figures.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serverkit import app_for, one_thread
from sweep_strategies import sweep_bodies, vary_axis

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))  # per route; make fuzz: many more
REPORT = os.environ.get("FUZZ_REPORT")  # a JSON file for the figures (make fuzz)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
STATUSES: collections.Counter = collections.Counter()
SWEEPS = "POST /api/lab/sweeps"
schemathesis.openapi.format("sweep-axis", vary_axis())  # valid cases carry valid axes


@pytest.fixture(scope="module")
def fuzz_app(engine):
    app = app_for(engine, max_steps=2, max_pixels=64 * 64, max_images=2, max_prompt_chars=300,
                  max_upload_mb=0.05, queue_depth=4, request_timeout_s=30, preview_every=0)
    with one_thread():
        yield app
        shutdown_lifespans()  # schemathesis keeps an app's lifespan up until told
    if REPORT:
        _write_report(Path(REPORT))


def test_fuzz_every_route(fuzz_app):
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15  # every route of the app is in the schema
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode)
    assert sum(STATUSES.values()) >= len(operations)


def test_fuzz_lab_sweeps_with_accepted_bodies(fuzz_app):
    """Whole sweep bodies the lab accepts (a prompt, valid axes, a few frames), sent through
    the same checks: the accepting path (planning, the queue, the worker) answers 202 or,
    when the lab queue is full, 429; never a 5xx."""
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operation = api[SWEEPS.split()[1]][SWEEPS.split()[0]]
    accepted = collections.Counter()
    lab = fuzz_app.state.zturbo_lab
    for job in lab.all():  # the sweeps the route fuzzing left queued: room for these
        lab.cancel(job)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(body=sweep_bodies())
    def run(body) -> None:
        case = operation.Case(body=body, media_type="application/json")
        response = case.call()
        STATUSES[(SWEEPS, response.status_code)] += 1
        accepted[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        assert response.status_code in (202, 429), response.text

    run()
    assert accepted[202] >= 1, accepted


def _fuzz(operation, mode) -> None:
    """``EXAMPLES`` generated cases for one route, valid ones or invalid ones (``mode``),
    each sent and checked."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call()
        STATUSES[(operation.label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # a route with no inputs has no invalid ones to send
        assert mode is GenerationMode.NEGATIVE, operation.label


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=24),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)
METHODS = ["initialize", "notifications/initialized", "tools/list", "tools/call", "ping",
           "resources/list", "resources/read", "resources/templates/list", "server/discover",
           "notifications/cancelled", "prompts/list", "no/such/method"]
TOOL_CALL = st.fixed_dictionaries({
    "name": st.sampled_from(["generate", "edit", "list_images", "get_image", "cancel", "sweep",
                             "models", "info", "nope"]),
    "arguments": st.dictionaries(st.sampled_from(["prompt", "width", "steps", "seed", "image",
                                                  "id", "vary", "limit", "x"]), JSON,
                                 max_size=4)})
MESSAGE = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2])},
    optional={"id": st.integers() | st.text(max_size=8) | st.none(),
              "method": st.sampled_from(METHODS) | st.text(max_size=16),
              "params": TOOL_CALL | JSON})
REQUEST = st.fixed_dictionaries({  # a well-formed envelope: the params reach the handlers
    "jsonrpc": st.just("2.0"), "id": st.integers(1, 10**6),
    "method": st.sampled_from(["tools/call"] * 4 + METHODS), "params": TOOL_CALL | JSON})
BODY = st.one_of(st.binary(max_size=120), JSON.map(json.dumps), MESSAGE.map(json.dumps),
                 st.lists(MESSAGE, max_size=3).map(json.dumps), REQUEST.map(json.dumps),
                 REQUEST.map(json.dumps), REQUEST.map(json.dumps))
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "fuzz", "version": "0"}}}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


def mcp_headers(session: str):
    """Headers: mostly well formed with a live session (so bodies reach the tools), else a
    stray session id, a wrong accept or content type, any protocol version."""
    return st.fixed_dictionaries(
        {"content-type": st.sampled_from(["application/json"] * 4 + ["text/plain"]),
         "accept": st.sampled_from([MCP_HEADERS["accept"]] * 4 + ["text/html"]),
         "mcp-session-id": st.sampled_from([session] * 4) | st.text("0123456789abcdef",
                                                                    min_size=1, max_size=32)},
        optional={"mcp-protocol-version": st.sampled_from(
            ["2025-06-18", "2025-11-25", "2026-07-28", "1999-01-01", "x"])})


def test_fuzz_mcp_json_rpc(engine):
    app = app_for(engine, max_steps=2, max_pixels=64 * 64, max_images=2, max_prompt_chars=300,
                  max_upload_mb=0.05, queue_depth=4, request_timeout_s=30, preview_every=0)
    # a loopback Host: the endpoint's DNS-rebinding check lets the bodies through to parsing
    with one_thread(), TestClient(app, base_url="http://127.0.0.1:8000") as client:
        session = _handshake(client)

        @settings(max_examples=EXAMPLES * 25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(body=BODY, headers=mcp_headers(session))
        def post(body: bytes | str, headers: dict) -> None:
            response = client.post("/mcp", content=body, headers=headers)
            STATUSES[("POST /mcp", response.status_code)] += 1
            assert response.status_code < 500, (body, headers, response.text[:300])

        post()
        _handshake(client)  # still serving: a new session, and ready
        assert client.get("/api/ready").status_code == 200


def _handshake(client) -> str:
    """Initialize a session; its id."""
    answer = client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
    assert answer.status_code == 200 and '"serverInfo"' in answer.text, answer.text
    session = answer.headers["mcp-session-id"]
    done = client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                       headers={**MCP_HEADERS, "mcp-session-id": session})
    assert done.status_code == 202
    return session


def _write_report(path: Path) -> None:
    by_code = collections.Counter()
    for (_, code), n in STATUSES.items():
        by_code[code] += n
    report = {"examples_per_route": EXAMPLES, "requests": sum(by_code.values()),
              "statuses": dict(sorted(by_code.items())),
              "server_errors": sum(n for code, n in by_code.items() if code >= 500),
              "accepted_sweeps": STATUSES[(SWEEPS, 202)],
              "by_route": {f"{label} {code}": n for (label, code), n in sorted(STATUSES.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
