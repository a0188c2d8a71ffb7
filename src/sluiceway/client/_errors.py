"""Turning what a server answers into :class:`~sluiceway.errors.SluicewayError` subclasses.

The client raises the server's own error classes (rebuilt with
:func:`sluiceway.errors.error_from_code`), plus two of its own for failures no server reported::

    SluicewayError
    ├── … every server error, by its code (RateLimitedError carries retry_after)
    ├── ConnectionFailedError   connection_failed   the server could not be reached, or the
    │                                               connection dropped and could not be resumed
    └── StreamProtocolError     protocol_error      the answer is not the stream we expected
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from sluiceway.errors import SluicewayError, error_from_code


class ConnectionFailedError(SluicewayError):
    """The server could not be reached, or the stream broke off and could not be resumed."""

    code = "connection_failed"
    status = 503
    retryable = True


class StreamProtocolError(SluicewayError):
    """The server (or a proxy in front of it) answered with something that is not the stream."""

    code = "protocol_error"
    status = 502


# Statuses whose body is not sluiceway's (a proxy's HTML page, say) still mean something.
_CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limited",
    499: "cancelled",
    502: "upstream_error",
    503: "upstream_unavailable",
    504: "upstream_timeout",
}


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> SluicewayError:
    """The error for a non-2xx answer: the body's ``{"error": {"code", "message"}}`` if it has one."""
    payload = _json(body)
    error = payload.get("error") if isinstance(payload, dict) else None
    retry_after = _retry_after(error, headers)
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error_from_code(error["code"], str(error.get("message", "")), retry_after)
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    else:
        message = body[:200].decode("utf-8", "replace").strip() or "no body"
    code = _CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_request")
    return error_from_code(code, f"HTTP {status}: {message}", retry_after)


def error_from_payload(payload: Mapping[str, Any]) -> SluicewayError:
    """The error for an in-band ``{"type": "error", "code", "message", "retry_after"?}`` event."""
    retry_after = payload.get("retry_after")
    return error_from_code(
        str(payload.get("code", "internal")),
        str(payload.get("message", "")),
        float(retry_after) if isinstance(retry_after, int | float) else None,
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _retry_after(error: Any, headers: Mapping[str, str]) -> float | None:
    if isinstance(error, dict) and isinstance(error.get("retry_after"), int | float):
        return float(error["retry_after"])
    return parse_retry_after(headers.get("retry-after"))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
