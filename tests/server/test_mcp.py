"""The MCP front end, driven by the SDK's own client: over streamable HTTP at /mcp of a real
server (uvicorn on a free port), and over stdio (``zturbo mcp --model demo`` as a
subprocess). Pixels are compared with the same request over the HTTP API."""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import anyio
import httpx
import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from zturbo.config import Request
from zturbo.server.mcp.args import SOURCE_FIELDS

from serverkit import SMALL, app_for, gate, live_server, one_thread, wait_for

ARGS = {"prompt": "a lighthouse at dusk", "seed": 7, **SMALL, "steps": 3}
TOOLS = {"generate", "edit", "list_images", "get_image", "cancel", "sweep", "models", "info"}
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def http_client(base: str, key: str | None = None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300))
    return Client(streamable_http_client(base + "/mcp", http_client=http))


def png_of(result) -> bytes:
    """The PNG of a tool result's (first) image content."""
    return base64.b64decode(next(b for b in result.content if b.type == "image").data)


def rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def http_pixels(base: str, **body) -> np.ndarray:
    """The same request over the HTTP API, run in full (no cache can answer it)."""
    r = httpx.post(base + "/api/generate", json={**body, "teleport": False}, timeout=120)
    assert r.status_code == 200, r.text
    return rgb(r.content)


def http_error(base: str, body: dict) -> str:
    r = httpx.post(base + "/api/jobs", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    return r.json()["error"]["message"]


def test_http_generate_repeat_progress_and_errors(engine):
    app = app_for(engine)
    with live_server(app) as base:
        async def session():
            async with http_client(base) as client:
                listed = await client.list_tools()
                steps = []

                async def progress(done, total, message):
                    steps.append((done, total, message))

                first = await client.call_tool("generate", ARGS, progress_callback=progress)
                again = await client.call_tool("generate", ARGS)
                bad_size = await client.call_tool("generate", {**ARGS, "width": 1000})
                unknown = await client.call_tool("generate", {**ARGS, "colour": "red"})
                link = next(b for b in first.content if b.type == "resource_link")
                resource = await client.read_resource(link.uri)
                return listed, steps, first, again, bad_size, unknown, link, resource

        listed, steps, first, again, bad_size, unknown, link, resource = anyio.run(session)

        assert {t.name for t in listed.tools} == TOOLS
        schema = next(t for t in listed.tools if t.name == "generate").input_schema
        # derived from Request: every field reaches agents (img2img's go to edit)
        assert set(Request.model_fields) - SOURCE_FIELDS <= set(schema["properties"])
        assert schema["required"] == ["prompt"]

        assert not first.is_error
        image = first.structured_content["images"][0]
        assert image["seed"] == 7 and image["served"] == "full"
        assert image["request"]["steps"] == 3 and image["url"].startswith(base)
        assert np.array_equal(rgb(png_of(first)), http_pixels(base, **ARGS))
        # a repeat is served from the cache (the session engine stores no final images:
        # it resumes from the last stored step), with the same pixels
        assert again.structured_content["images"][0]["served"] == "resume"
        assert np.array_equal(rgb(png_of(again)), rgb(png_of(first)))
        # progress: step N of M from the job's events
        assert [(d, t) for d, t, _ in steps if d] == [(1, 3), (2, 3), (3, 3)]
        assert f"(job {first.structured_content['job_id']})" in steps[-1][2]
        # the resource link reads back the same PNG
        assert link.uri == f"zturbo://images/{image['id']}"
        assert base64.b64decode(resource.contents[0].blob) == png_of(first)

        # bad arguments: tool errors with the HTTP API's one-line messages
        assert bad_size.is_error and unknown.is_error
        assert bad_size.content[0].text == http_error(base, {**ARGS, "width": 1000})
        assert bad_size.structured_content["error"]["code"] == 400
        assert unknown.content[0].text == http_error(base, {**ARGS, "colour": "red"})
        assert httpx.get(base + "/api/ready").status_code == 200  # still serving


def test_http_cancel_by_client_and_by_tool_and_queue_full(engine):
    app = app_for(engine, queue_depth=1)
    jobs = app.state.zturbo.jobs
    with live_server(app) as base:
        async def client_cancels(client, g) -> str:
            """Start a generate, cancel the call from the client while the DiT is held."""
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "generate", {**ARGS, "seed": 101})
                    await anyio.to_thread.run_sync(g.wait)
                    running = jobs.active()[0]
                    scope.cancel()
            await anyio.to_thread.run_sync(lambda: wait_for(
                lambda: running.cancel_reason, 30, "the job to be asked to cancel"))
            return running.id

        async def tool_cancels(client, g):
            """Hold a job, fill the queue, see the 429, cancel the held job with the tool."""
            async with anyio.create_task_group() as tg:
                outcome = {}

                async def call():
                    outcome["held"] = await client.call_tool("generate", {**ARGS, "seed": 102})

                tg.start_soon(call)
                await anyio.to_thread.run_sync(g.wait)
                queued = httpx.post(base + "/api/jobs", json={**ARGS, "seed": 103}, timeout=30)
                assert queued.status_code == 202
                outcome["full"] = await client.call_tool("generate", {**ARGS, "seed": 104})
                info = await client.call_tool("info", {})
                held = info.structured_content["queue"][0]["id"]
                outcome["cancel"] = await client.call_tool("cancel", {"id": held})
                await anyio.to_thread.run_sync(g.release)
            return outcome

        async def session():
            async with http_client(base) as client:
                with gate(engine) as g:
                    first = await client_cancels(client, g)
                    g.release()
                with gate(engine, at=1) as g:  # the next job's first DiT pass
                    return first, await tool_cancels(client, g)

        first, outcome = anyio.run(session)
        wait_for(lambda: jobs.get(first).terminal, 30, "the cancelled job to end")
        assert jobs.get(first).status == "cancelled"
        assert outcome["full"].is_error
        assert outcome["full"].structured_content["error"]["code"] == 429
        assert outcome["full"].structured_content["error"]["retry_after"] >= 1
        assert outcome["full"].content[0].text.startswith("the queue is full (1 jobs waiting)")
        assert not outcome["cancel"].is_error
        assert outcome["held"].is_error
        assert "was cancelled" in outcome["held"].content[0].text
        assert outcome["held"].structured_content["error"]["code"] == 409


def test_http_api_key_is_enforced_on_mcp(engine):
    app = app_for(engine, api_key="sekret")
    with live_server(app, headers={"Authorization": "Bearer sekret"}) as base:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        refused = httpx.post(base + "/mcp", json=body, headers={
            "Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"

        async def with_key():
            async with http_client(base, "sekret") as client:
                return await client.list_tools()

        async def wrong_key():
            async with http_client(base, "wrong") as client:
                return await client.list_tools()

        assert {t.name for t in anyio.run(with_key).tools} == TOOLS
        with pytest.raises(BaseException):  # refused at the handshake
            anyio.run(wrong_key)


def test_edit_history_and_info_over_http(engine):
    app = app_for(engine)
    with live_server(app) as base:
        async def session():
            async with http_client(base) as client:
                made = await client.call_tool("generate", ARGS)
                uri = made.structured_content["images"][0]["uri"]
                edited = await client.call_tool("edit", {"prompt": "the same, in snow",
                                                         "image": uri, "strength": 0.5,
                                                         "steps": 2, "seed": 3})
                b64 = base64.b64encode(png_of(made)).decode()
                by_pixels = await client.call_tool("edit", {"prompt": "the same, in snow",
                                                            "image": b64, "strength": 0.5,
                                                            "steps": 2, "seed": 3})
                not_image = await client.call_tool("edit", {"prompt": "x", "image": "bm90IGFuIGltYWdl"})
                found = await client.call_tool("list_images", {"query": "snow"})
                one = await client.call_tool("get_image", {"id": uri})
                missing = await client.call_tool("get_image", {"id": "0" * 32})
                info = await client.call_tool("info", {})
                models = await client.call_tool("models", {})
                return made, edited, by_pixels, not_image, found, one, missing, info, models

        made, edited, by_pixels, not_image, found, one, missing, info, models = anyio.run(session)
    assert not edited.is_error, edited.content[-1].text
    request = edited.structured_content["images"][0]["request"]
    assert request["strength"] == 0.5 and len(request["image"]) == 64  # pixels named by hash
    assert (request["width"], request["height"]) == (64, 64)  # the source's size
    assert np.array_equal(rgb(png_of(edited)), rgb(png_of(by_pixels)))  # same source either way
    assert not_image.is_error and "is not an image" in not_image.content[0].text
    assert found.structured_content["total"] == 2  # the two edits, not the lighthouse
    assert one.structured_content["id"] == made.structured_content["images"][0]["id"]
    assert png_of(one) == png_of(made)
    assert missing.is_error and missing.structured_content["error"]["code"] == 404
    assert info.structured_content["ready"]["ready"] is True
    assert info.structured_content["options"]["limits"]["max_steps"] == 100
    assert models.structured_content["model"] == engine.spec


def test_sweep_tool_runs_the_lab_and_links_the_report(engine):
    app = app_for(engine)
    with live_server(app) as base:
        async def session():
            async with http_client(base) as client:
                frames = []

                async def progress(done, total, message):
                    frames.append((done, total))

                ran = await client.call_tool("sweep", {"prompt": "a red cube", "vary": ["steps=1,2"],
                                                       "fixed": {"width": 64, "height": 64}},
                                             progress_callback=progress)
                nothing = await client.call_tool("sweep", {"prompt": "a red cube"})
                return ran, frames, nothing

        ran, frames, nothing = anyio.run(session)
        assert not ran.is_error, ran.content[-1].text
        summary = ran.structured_content
        assert summary["status"] == "done" and summary["total"] == 2
        assert frames == [(1, 2), (2, 2)]
        assert summary["report"].startswith(base + "/api/lab/runs/")
        assert httpx.get(summary["report"]).status_code == 200
    assert nothing.is_error
    assert nothing.content[0].text == "nothing to sweep: give vary or preset"


@pytest.mark.subprocess
def test_stdio_zturbo_mcp(engine, zturbo_home):
    """``zturbo mcp --model demo`` as an agent launches it: tools, pixels equal to the HTTP
    API's, a repeat from the cache, progress, a bad argument, a cancel from the client."""
    env = {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ZTURBO_HOME": str(zturbo_home), "ZTURBO_TELEPORT_REPEAT": "image",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "zturbo.cli", "mcp", "--model", "demo"], env=env)

    async def session():
        async with Client(params) as client:
            listed = await client.list_tools()
            steps = []

            async def progress(done, total, message):
                steps.append((done, total))

            first = await client.call_tool("generate", ARGS, progress_callback=progress)
            again = await client.call_tool("generate", ARGS)
            bad = await client.call_tool("generate", {**ARGS, "steps": 0})
            started = anyio.Event()

            async def note(done, total, message):
                if done:
                    started.set()

            long = {**ARGS, "width": 512, "height": 512, "steps": 60, "seed": 11}
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: client.call_tool("generate", long, progress_callback=note))
                    await started.wait()
                    scope.cancel()
            after = await client.call_tool("list_images", {})
            return listed, steps, first, again, bad, after

    listed, steps, first, again, bad, after = anyio.run(session)
    assert {t.name for t in listed.tools} == TOOLS
    image = first.structured_content["images"][0]
    assert image["served"] == "full" and os.path.exists(image["file"])
    assert again.structured_content["images"][0]["served"] == "image"
    assert np.array_equal(rgb(png_of(again)), rgb(png_of(first)))
    assert [(d, t) for d, t in steps if d] == [(1, 3), (2, 3), (3, 3)]
    assert bad.is_error and bad.structured_content["error"]["code"] == 400
    assert after.structured_content["total"] == 2  # the cancelled job made no image
    with TestClient(app_for(engine)) as http:  # the same request over the HTTP API
        r = http.post("/api/generate", json={**ARGS, "teleport": False})
        assert np.array_equal(rgb(png_of(first)), rgb(r.content))
        assert bad.content[0].text == http.post("/api/jobs", json={**ARGS, "steps": 0}
                                                ).json()["error"]["message"]


def test_zturbo_mcp_refuses_a_state_dir_a_server_holds():
    from zturbo.server.statelock import StateLock

    from conftest import run_cli

    lock = StateLock().acquire("http://127.0.0.1:8123")
    try:
        out = run_cli("mcp", "--model", "demo")
    finally:
        lock.release()
    assert out.returncode == 2
    assert "http://127.0.0.1:8123" in out.stderr and "/mcp endpoint" in out.stderr


MISSING_SDK = """
import sys
sys.modules["mcp"] = None  # as if the mcp extra were not installed
from fastapi.testclient import TestClient
from zturbo.config import load_settings
from zturbo.server import create_app
from zturbo.cli import main
app = create_app(load_settings(flags={"model": "demo"})[0])
answer = TestClient(app).post("/mcp", json={})
print(answer.status_code, answer.json()["error"]["message"])
sys.argv = ["zturbo", "mcp", "--model", "demo"]
main()
"""


@pytest.mark.subprocess
def test_without_the_sdk_mcp_says_how_to_get_it():
    import subprocess

    out = subprocess.run([sys.executable, "-c", MISSING_SDK], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert out.stdout.startswith("501 the MCP endpoint needs the mcp package"), out.stderr
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("zturbo: error: zturbo mcp needs the mcp package (mcp")
    assert last.endswith("pip install 'zturbo[mcp]'")


def test_generate_and_edit_take_a_control_image(control_engine):
    photo = Image.new("RGB", (64, 48), (30, 30, 30))
    photo.paste((220, 220, 220), (16, 12, 48, 36))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    args = {"prompt": "a robot", "seed": 5, "steps": 2, "control_type": "canny",
            "control_scale": 0.9}
    with live_server(app_for(control_engine)) as base:
        async def session():
            async with http_client(base) as client:
                made = await client.call_tool("generate", {**args, "control_image": b64})
                broken = await client.call_tool("generate", {**args, "control_image": "eA=="})
                return made, broken

        made, broken = anyio.run(session)
        same = http_pixels(base, **args, control_image_b64=b64)
    assert not made.is_error, made.content[-1].text
    request = made.structured_content["images"][0]["request"]
    assert len(request["control_image"]) == 64 and request["control_type"] == "canny"
    assert (request["width"], request["height"]) == (64, 48)  # the control image's size
    assert np.array_equal(rgb(png_of(made)), same)  # the HTTP API's pixels
    assert broken.is_error and "control_image" in broken.content[0].text
