"""Every error the server returns has one shape (OpenAI's): ``{"error": {"message", "type",
"code"}}``, so the ``openai`` client and the web page show the message. Bad input is a 4xx
with a one-line message, never a traceback or a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from zturbo.errors import ZTurboError
from zturbo.server.jobs import NotAccepting, QueueFull
from zturbo.server.pool import FAILED_RETRY_S, ModelFailed, UnknownModel
from zturbo.server.store.redis_store import StoreUnavailable

log = logging.getLogger("zturbo.server")


class ApiError(ZTurboError):
    """A client-facing error with its HTTP status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers


RETRY_LOADING_S = 5  # Retry-After while the model loads or the server stops


def unavailable(message: str) -> ApiError:
    """503 with Retry-After: the model is loading (or failed to load)."""
    return ApiError(503, message, "unavailable", headers={"Retry-After": str(RETRY_LOADING_S)})


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """The one error shape (OpenAI's)."""

    error: ErrorDetail


_MEANINGS = {
    400: "a value the request validation refuses", 401: "missing or wrong API key",
    404: "unknown id or model", 409: "conflict: the job ended or was cancelled",
    413: "body, upload or image too large", 422: "the body's shape (unknown field, wrong type)",
    429: "queue full (Retry-After)", 503: "model loading or shutting down (Retry-After)",
    504: "timed out",
}
# Declared on every API route, so the schema tells clients (and fuzzers) the truth.
# "model" registers ErrorBody; the explicit JSON content keeps it JSON on routes whose own
# answers are another type (the event stream).
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": meaning, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for status, meaning in _MEANINGS.items()
}


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    # an echoed lone surrogate cannot be UTF-8: written as its escape, never a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(exc) -> str:
    """One line from pydantic's list of errors (a body's or a tool's arguments):
    ``width: Input should be ...``; an unknown name says ``unknown field``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    msg = str(err.get("msg", "invalid input")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return f"{where}: {msg}"


def as_api_error(exc: ZTurboError) -> ApiError:
    """The status, kind and headers a failure is answered with, on every front end: bad
    input 400, a full queue 429 (Retry-After), loading or a store down 503."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(429, str(exc), "rate_limit_error",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, NotAccepting):
        return ApiError(503, str(exc), "unavailable",
                        headers={"Retry-After": str(RETRY_LOADING_S)})
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, str(exc), "unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, UnknownModel):  # OpenAI's answer to an unknown model
        return ApiError(404, str(exc), "model_not_found")
    if isinstance(exc, ModelFailed):
        return ApiError(503, str(exc), "unavailable",
                        headers={"Retry-After": str(int(FAILED_RETRY_S))})
    return ApiError(400, str(exc))  # ModelTooLarge too: it can never load here


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the one error shape."""

    @app.exception_handler(ZTurboError)
    async def _zturbo(request: Request, exc: ZTurboError):
        error = as_api_error(exc)
        return error_response(error.status, str(error), error.kind, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = TOO_LARGE
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, internal_error(exc), "server_error")


def internal_error(exc: Exception) -> str:
    """What a client is told about a bug (the traceback goes to the log only)."""
    return f"internal error: {type(exc).__name__}"


TOO_LARGE = "request body too large (setting max_upload_mb)"
