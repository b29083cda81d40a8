"""The MCP server of an app (the SDK's low-level ``Server``): the tools with their schemas,
one error path, and the images as resources (``zturbo://images/{id}``).

Every failure of a tool call comes back as a tool error (``isError``) with the HTTP API's
one-line message and its status in ``structuredContent.error`` (429 with ``retry_after``),
never as a crash of the server.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from zturbo.errors import ZTurboError
from zturbo.server.errors import as_api_error, internal_error, validation_message
from zturbo.server.mcp import tools
from zturbo.server.mcp.args import (
    IMAGE_URI,
    CancelArgs,
    EditArgs,
    GenerateArgs,
    ImageArgs,
    ListImagesArgs,
    NoArgs,
    SweepArgs,
)
from zturbo.server.mcp.tools import PNG, Answer, Call
from zturbo.server.routes.images import MAX_PAGE, history_page, image_png
from zturbo.server.routes.lab import MAX_FRAMES

log = logging.getLogger("zturbo.server")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    args: type[BaseModel]
    run: Callable[[Call, Any], Awaitable[Answer]]
    description: str
    read_only: bool = False

    def tool(self) -> types.Tool:
        return types.Tool(name=self.name, description=self.description,
                          input_schema=self.args.model_json_schema(),
                          annotations=types.ToolAnnotations(read_only_hint=self.read_only,
                                                            open_world_hint=False))


TOOLS = {spec.name: spec for spec in (
    ToolSpec("generate", GenerateArgs, tools.generate,
             "Generate images from a prompt with Z-Image-Turbo. Any generation field may be "
             "given (size or aspect, steps, seed, guidance, LoRAs, templates...); left out, "
             "the server's defaults apply. Returns each image (PNG), a zturbo://images link, "
             "and JSON with its parameters, seed and how it was served (served: image or "
             "final_latent for an exact repeat from the cache, resume, full). Sends progress "
             "(step N of M, with the job id for cancel)."),
    ToolSpec("edit", EditArgs, tools.edit,
             "Edit an image (img2img; inpaint with a mask, white = repaint): the image as "
             "base64 or zturbo://images/<id>, a prompt, a strength (how far from the image), "
             "and any generation field. The size defaults to the image's. Returns like "
             "generate."),
    ToolSpec("list_images", ListImagesArgs, tools.list_images,
             "Search the image history (newest first; query matches the prompts): ids, seeds, "
             "parameters and links.", read_only=True),
    ToolSpec("get_image", ImageArgs, tools.get_image,
             "One image of the history by id: the PNG and its parameters.", read_only=True),
    ToolSpec("cancel", CancelArgs, tools.cancel,
             "Cancel a job (queued: at once; running: at its next step) or a lab sweep."),
    ToolSpec("sweep", SweepArgs, tools.sweep,
             "Run a small lab sweep: vary axes (e.g. \"steps=4,8\") or a preset over one "
             f"prompt, on this server's model (at most {MAX_FRAMES} frames). Returns the run's "
             "summary and a link to its report (contact sheet, metrics)."),
    ToolSpec("models", NoArgs, tools.models,
             "The model this server runs, its fingerprint, the LoRAs and prompt templates a "
             "request may name.", read_only=True),
    ToolSpec("info", NoArgs, tools.info,
             "Readiness, the job queue (ids to cancel), running sweeps, defaults and limits "
             "(sizes, steps, images, upload size), aspects, cache counters.", read_only=True),
)}
IMAGES_TEMPLATE = types.ResourceTemplate(
    name="image", uri_template=IMAGE_URI + "{id}", mime_type=PNG,
    description="a generated image (PNG with its parameters in text chunks)")


def build(app, *, local: bool) -> Server:
    """The MCP server over ``app`` (a ``create_app`` app: its state, queue and history).
    ``local``: the client runs on this machine (stdio): links are files, not URLs."""

    async def list_tools(ctx: ServerRequestContext, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[spec.tool() for spec in TOOLS.values()])

    async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams
                        ) -> types.CallToolResult:
        spec = TOOLS.get(params.name)
        if spec is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}")
        call = Call(app, local, _base_url(ctx), ctx.session.report_progress)
        return await run_tool(spec, call, params.arguments or {})

    async def list_templates(ctx: ServerRequestContext, params
                             ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[IMAGES_TEMPLATE])

    async def list_resources(ctx: ServerRequestContext, params) -> types.ListResourcesResult:
        offset = _cursor(params.cursor if params else None)
        page = await asyncio.to_thread(history_page, app.state.zturbo, "", MAX_PAGE, offset)
        following = offset + len(page["items"])
        return types.ListResourcesResult(
            resources=[types.Resource(uri=IMAGE_URI + row["id"], name=f"{row['id']}.png",
                                      description=row["prompt"][:200], mime_type=PNG)
                       for row in page["items"]],
            next_cursor=str(following) if following < page["total"] else None)

    async def read_resource(ctx: ServerRequestContext, params: types.ReadResourceRequestParams
                            ) -> types.ReadResourceResult:
        uri = str(params.uri)
        if not uri.startswith(IMAGE_URI):
            raise MCPError(code=types.INVALID_PARAMS, message=f"no resource {uri[:200]!r}")
        try:
            png = await asyncio.to_thread(image_png, app.state.zturbo, uri[len(IMAGE_URI):])
        except ZTurboError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from None
        return types.ReadResourceResult(contents=[types.BlobResourceContents(
            uri=uri, mime_type=PNG, blob=base64.b64encode(png).decode())])

    return Server(
        "zturbo", version=_version(), title="zturbo (Z-Image-Turbo)",
        instructions="Text-to-image with Z-Image-Turbo. generate makes images (same seed and "
                     "parameters: the same pixels, an exact repeat is served from the "
                     "cache); edit changes one; list_images/get_image search what was made; "
                     "info gives the limits and defaults.",
        get_tool_input_schema=lambda name: (TOOLS[name].args.model_json_schema()
                                            if name in TOOLS else None),
        on_list_tools=list_tools, on_call_tool=call_tool,
        on_list_resources=list_resources, on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def run_tool(spec: ToolSpec, call: Call, arguments: dict[str, Any]) -> types.CallToolResult:
    """Validate the arguments and run the tool; every failure is a tool error."""
    try:
        args = spec.args.model_validate(arguments)
    except ValidationError as exc:
        return tool_error(422, validation_message(exc), "invalid_request_error")
    try:
        return (await spec.run(call, args)).result()
    except ZTurboError as exc:
        error = as_api_error(exc)
        return tool_error(error.status, str(error), error.kind, error.headers)
    except Exception as exc:  # a bug: log it, answer it, keep serving
        log.exception("mcp: tool %s failed", spec.name)
        return tool_error(500, internal_error(exc), "server_error")


def tool_error(status: int, message: str, kind: str,
               headers: dict[str, str] | None = None) -> types.CallToolResult:
    """The HTTP API's error, as a tool error: the one-line message, and the error object
    (``{"error": {message, type, code}}``, plus ``retry_after`` seconds for a 429/503)."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": status}
    retry = (headers or {}).get("Retry-After")
    if retry:
        error["retry_after"] = int(retry)
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                structured_content={"error": error}, is_error=True)


def _base_url(ctx: ServerRequestContext) -> str | None:
    """The HTTP request's base URL (None on stdio)."""
    base = getattr(ctx.request, "base_url", None)
    return str(base) if base is not None else None


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 12:
        raise MCPError(code=types.INVALID_PARAMS, message="bad cursor")
    return int(cursor)


def _version() -> str:
    try:
        return version("zturbo")
    except PackageNotFoundError:  # sources on the path, not installed
        return "0+unknown"
