"""Errors before the first byte: a JSON body in the protocol's own shape, with the right status.

Each protocol route names its shape; the exception handlers of the app use the shape of the
route that failed. ``Retry-After`` goes with 429 and 503. No stack trace ever reaches a client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from sluiceway.errors import ERROR_CLASSES, InternalError, InvalidRequestError, SluicewayError
from sluiceway.events import ErrorEvent

logger = logging.getLogger("sluiceway.server")

ErrorShape = Callable[[ErrorEvent, int], dict[str, Any]]


def seed_shape(error: ErrorEvent, status: int) -> dict[str, Any]:
    """sluiceway's own error body: ``{"error": {"code", "message", ...}}``."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.retry_after is not None:
        body["retry_after"] = error.retry_after
    return {"error": body}


class ErrorShapes:
    """Which error shape answers for which path prefix (longest prefix wins; default: seed).

    A shape registered with ``header`` answers only requests that carry that header, before a shape
    of the same prefix without one: ``/v1/models`` answers in Anthropic's shape to a caller that sends
    ``anthropic-version`` (as its successes do), in OpenAI's otherwise.
    """

    def __init__(self) -> None:
        self._shapes: list[tuple[str, str | None, ErrorShape]] = []

    def register(self, path_prefix: str, shape: ErrorShape, *, header: str | None = None) -> None:
        """Routes under ``path_prefix`` answer errors in ``shape`` (only with ``header``, if given)."""
        self._shapes.append((path_prefix, None if header is None else header.lower(), shape))
        self._shapes.sort(key=lambda item: (-len(item[0]), item[1] is None))

    def shape_for(self, path: str, headers: Mapping[str, str] | None = None) -> ErrorShape:
        """The error shape of the route serving ``path`` for a request with ``headers``."""
        for prefix, header, shape in self._shapes:
            if path.startswith(prefix) and (header is None or (headers is not None and header in headers)):
                return shape
        return seed_shape


def status_for(code: str) -> int:
    """The HTTP status for a stable error code."""
    cls = ERROR_CLASSES.get(code)
    return cls.status if cls is not None else 500


def error_response(error: ErrorEvent, request: Request, status: int | None = None) -> JSONResponse:
    """A JSON error response in the shape of the route serving ``request``."""
    status = status or status_for(error.code)
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    shapes: ErrorShapes = request.app.state.error_shapes
    body = shapes.shape_for(request.url.path, request.headers)(error, status)
    return JSONResponse(body, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every failure before the first byte to a clean JSON error."""

    async def on_sluiceway(request: Request, exc: Exception) -> JSONResponse:
        return exception_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(InvalidRequestError(describe_validation(exc)).to_event(), request, 400)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = "invalid_request" if exc.status_code < 500 else "internal"
        detail = str(exc.detail)
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):  # FastAPI's "error parsing the body"
            detail = f"the request body must be UTF-8 JSON: {cause.reason} at byte {cause.start}"
        event = ErrorEvent(code, detail)
        return error_response(event, request, exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return exception_response(exc, request)

    app.add_exception_handler(SluicewayError, on_sluiceway)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def exception_response(exc: Exception, request: Request) -> JSONResponse:
    """The error response for ``exc`` raised serving ``request``: a ``SluicewayError`` as itself,
    anything else logged (with its stack trace, which stays in the log) and answered ``internal``."""
    if isinstance(exc, SluicewayError):
        return error_response(exc.to_event(), request, exc.status)
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(InternalError("internal server error").to_event(), request, 500)


def describe_validation(exc: RequestValidationError) -> str:
    """One line naming each bad field and what was wrong with it."""
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":  # FastAPI's, from JSONRequest: orjson's reason
            return f"the request body must be JSON ({err.get('ctx', {}).get('error', 'invalid')})"
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body"
