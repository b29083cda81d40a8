"""``/mcp`` on the HTTP server: the MCP server over streamable HTTP, inside the app.

The app's middleware runs first (the API key, the body cap, metrics), as for every route.
The SDK's session manager can run once only, so each run of the app's lifespan starts a
new one (``running``); between runs, and without the ``mcp`` package, ``/mcp`` answers a
one-line 503 in the API's error shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from zturbo.server.errors import error_response
from zturbo.server.mcp import server
from zturbo.server.uploads import max_body_bytes

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Endpoint:
    """The ASGI app at ``/mcp``; ``running()`` goes in the app's lifespan."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = server.build(app, local=False)
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        settings = self.app.state.zturbo.settings
        # shared state (Ray ingress replicas): no session lives in one replica's memory
        manager = StreamableHTTPSessionManager(
            app=self.server, security_settings=security(settings),
            max_request_body_size=max_body_bytes(settings),
            stateless=settings.state_backend == "redis")
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:  # in-flight tool calls are cancelled, and so their jobs
                self._manager = None

    async def __call__(self, scope, receive, send) -> None:
        manager = self._manager
        if manager is None:
            await error_response(503, "the MCP endpoint is not running (starting or stopping)",
                                 "unavailable")(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)


def security(settings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection while bound to loopback (what the SDK does by default): a
    page in a browser cannot reach a local server under another host name. Allowed: the
    loopback names, the public_url's host, and the configured CORS origins."""
    if settings.host not in LOOPBACK:
        return None
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*",
               *settings.cors_origins]
    if settings.public_url:
        netloc = settings.public_url.split("://", 1)[-1].split("/", 1)[0]
        hosts.append(netloc)
        origins.append(settings.public_url.rstrip("/"))
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=hosts, allowed_origins=origins)
