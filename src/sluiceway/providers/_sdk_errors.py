"""Turning vendor SDK failures into the :mod:`sluiceway.errors` tree, without leaking credentials.

Each SDK-backed provider catches its SDK's errors at one place and hands the plain facts (HTTP
status, response headers, response body) to the builders here, so the mapping is the same for every
vendor::

    429                         RateLimitedError          retry_after from retry-after-ms / retry-after
    401, 403                    UpstreamAuthError
    408, 409, 425, 5xx          UpstreamError             (retry_after kept when the upstream sent one)
    other 4xx                   UpstreamError             not retryable: the same request is refused again
    an error event mid-stream   UpstreamError
    connect failure             UpstreamUnavailableError
    timeout                     UpstreamTimeoutError
    unparsable stream data      UpstreamError

Messages are written here from the status and the upstream's own ``error.message``; the SDKs'
exception texts are never reused (they may carry request details). Every message passes through
:func:`redact`, which removes the API key and anything shaped like a vendor key, because upstreams
do echo keys back ("Incorrect API key provided: sk-..."); it is shortened only after that, so a cut
never leaves part of a key behind.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Mapping

import aiohttp
import httpx2

from sluiceway.errors import (
    RateLimitedError,
    SluicewayError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

REDACTED = "[redacted]"
_MAX_UPSTREAM_MESSAGE = 300
"""Characters of the upstream's own message kept in an error (counted after redaction)."""
_TRANSIENT_4XX = frozenset({408, 409, 425})
"""Client-error statuses that may pass if the request is sent again (timeout, conflict, too early)."""
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError, json.JSONDecodeError)
"""Errors that can escape an SDK's stream iterator unwrapped (raw transport failures, bad JSON)."""


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and without anything that looks like an API key."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _KEY_SHAPED.sub(REDACTED, text)


def upstream_message(body: object) -> str | None:
    """The human message inside an upstream error body, whichever common shape it has.

    Handles ``{"error": {"message": ...}}`` (OpenAI, Anthropic), ``{"error": "..."}`` (Ollama),
    ``{"message": ...}`` and plain text.
    """
    inner = body.get("error", body) if isinstance(body, Mapping) else body
    if isinstance(inner, Mapping):
        inner = inner.get("message")
    if isinstance(inner, str) and inner.strip():
        return " ".join(inner.split())
    return None


def _detail(body: object, secret: str | None) -> str | None:
    """The upstream's message, redacted, then cut to :data:`_MAX_UPSTREAM_MESSAGE` characters."""
    message = upstream_message(body)
    return None if message is None else redact(message, secret)[:_MAX_UPSTREAM_MESSAGE]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    seconds = _number(value)
    if seconds is not None or value is None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def from_status(
    status: int, headers: Mapping[str, str], body: object, *, model: str, secret: str | None
) -> SluicewayError:
    """The error for an upstream that answered with an HTTP error status."""
    detail = _detail(body, secret)
    message = f"model {model!r}: upstream answered HTTP {status}" + (f": {detail}" if detail else "")
    message = redact(message, secret)
    retry_after = retry_after_seconds(headers)
    if status == 429:
        return RateLimitedError(message, retry_after=retry_after)
    if status in (401, 403):
        return UpstreamAuthError(message)
    refused = 400 <= status < 500 and status not in _TRANSIENT_4XX
    return UpstreamError(message, retry_after=retry_after, retryable=not refused)


def from_stream_error(body: object, *, model: str, secret: str | None) -> UpstreamError:
    """The error for an error event the upstream sent after the stream began."""
    detail = _detail(body, secret) or "no details"
    return UpstreamError(redact(f"model {model!r}: upstream failed mid-stream: {detail}", secret))


def timed_out(model: str) -> UpstreamTimeoutError:
    """The error for an upstream that did not answer in time."""
    return UpstreamTimeoutError(f"model {model!r}: upstream timed out")


def unreachable(model: str) -> UpstreamUnavailableError:
    """The error for an upstream that could not be reached or dropped the connection."""
    return UpstreamUnavailableError(f"model {model!r}: could not connect to the upstream")


def is_timeout(exc: BaseException) -> bool:
    """Whether a timeout-typed SDK/transport error really is a timeout.

    The SDKs' aiohttp transport reports every aiohttp connection failure (refused, reset, closed) as
    ``httpx2.ConnectTimeout``; the aiohttp error underneath says what actually happened.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientError):
            return isinstance(cause, asyncio.TimeoutError)
        cause = cause.__cause__ or cause.__context__
    return True


def from_transport(exc: Exception, *, model: str) -> SluicewayError:
    """The error for one of :data:`TRANSPORT_ERRORS`."""
    if isinstance(exc, httpx2.TimeoutException) and is_timeout(exc):
        return timed_out(model)
    if isinstance(exc, httpx2.TransportError):
        return unreachable(model)
    return UpstreamError(f"model {model!r}: upstream sent data that is not valid JSON")


def missing_key(model: str, env: str) -> UpstreamAuthError:
    """The error for a model whose API key variable is not set."""
    return UpstreamAuthError(
        f"model {model!r}: the environment variable {env} holding its API key is not set"
    )
