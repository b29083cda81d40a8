"""Every error the server returns has one shape (OpenAI's): ``{"error": {"message", "type",
"code"}}``, so the ``openai`` client and the web page show the message. Bad input is a 4xx
with a one-line message, never a traceback or a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ZTurboError
from .jobs import NotAccepting, QueueFull

log = logging.getLogger("zturbo.server")


class ApiError(ZTurboError):
    """A client-facing error with its HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """One line from FastAPI's list of errors: ``body.width: Input should be ...``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    msg = str(err.get("msg", "invalid input")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return f"{where}: {msg}"


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the one error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, str(exc), exc.kind)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull):
        return error_response(429, str(exc), "rate_limit_error",
                              headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NotAccepting)
    async def _closed(request: Request, exc: NotAccepting):
        return error_response(503, str(exc), "unavailable", headers={"Retry-After": "5"})

    @app.exception_handler(ZTurboError)
    async def _zturbo(request: Request, exc: ZTurboError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = "request body too large (setting max_upload_mb)"
        return error_response(exc.status_code, message, headers=exc.headers)
