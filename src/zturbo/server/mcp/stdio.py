"""``zturbo mcp``'s transport: the MCP server on stdin/stdout, over an app built in-process
(``create_app``: the same state, job queue and history as ``zturbo serve``, without HTTP).
"""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from zturbo.server.mcp.server import build


async def serve(app) -> None:
    """Serve one agent until it closes stdin. The SDK takes stdout for the protocol first,
    then the app starts (the model loads while the agent is already answered), and the app
    shuts down (jobs cancelled, history closed) when the agent goes."""
    server = build(app, local=True)
    async with stdio_server() as (read, write):
        async with app.router.lifespan_context(app):
            await server.run(read, write, server.create_initialization_options())
