"""The MCP front end: zturbo's tools for LLM agents (Model Context Protocol), over the same
app state, validation and job queue as the HTTP API.

``server.build(app)`` makes the MCP server of a ``create_app`` app; ``http.Endpoint`` mounts
it on the app at ``/mcp`` (streamable HTTP), ``stdio.serve`` runs it on stdin/stdout for
``zturbo mcp``. Only the server package and the CLI import it; it needs the ``mcp`` package
(``pip install 'zturbo[mcp]'``), which this ``__init__`` does not import.
"""
