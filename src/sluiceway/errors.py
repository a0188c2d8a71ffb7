"""Errors with stable string codes.

The tree::

    SluicewayError (code "internal", HTTP 500)
    ├── InvalidRequestError        invalid_request        400
    ├── AuthenticationError        unauthorized           401
    ├── PermissionDeniedError      forbidden              403
    ├── UnknownModelError          unknown_model          404
    ├── StreamNotFoundError        stream_not_found       404
    ├── ConversationNotFoundError  not_found              404
    ├── ReaderLaggedError          reader_lagged          409  (resume after the event it names)
    ├── RequestTooLargeError       request_too_large      413
    ├── RateLimitedError           rate_limited           429  (retry_after)
    ├── UpstreamAuthError          upstream_auth          502
    ├── UpstreamUnavailableError   upstream_unavailable   503  (retryable)
    ├── UpstreamTimeoutError       upstream_timeout       504  (retryable)
    ├── UpstreamError              upstream_error         502  (retryable unless the upstream refused: 4xx)
    ├── OverloadedError            overloaded             429  (retry_after)
    ├── ShuttingDownError          shutting_down          503  (retryable)
    ├── StoreUnavailableError      store_unavailable      503  (retryable)
    ├── CancelledError             cancelled              499
    └── InternalError              internal               500

Lower layers (SDKs, sockets) are translated into this tree at one boundary per provider with
``raise ... from exc``; the server maps codes to HTTP statuses and protocol error shapes.
"""

from __future__ import annotations

from typing import ClassVar

from sluiceway.events import ErrorEvent


class SluicewayError(Exception):
    """Root of every error sluiceway raises on purpose."""

    code: str = "internal"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_event(self) -> ErrorEvent:
        """This error as the in-band event sent once a stream has begun."""
        return ErrorEvent(self.code, self.message, self.retryable, self.retry_after)


class InvalidRequestError(SluicewayError):
    """The request is malformed or breaks a limit."""

    code = "invalid_request"
    status = 400


class AuthenticationError(SluicewayError):
    """The request carries no API key, or one this server does not know."""

    code = "unauthorized"
    status = 401


class PermissionDeniedError(SluicewayError):
    """The API key is valid but may not do this (e.g. use this model)."""

    code = "forbidden"
    status = 403


class UnknownModelError(SluicewayError):
    """The request names a model this server does not serve."""

    code = "unknown_model"
    status = 404


class RequestTooLargeError(SluicewayError):
    """The request body is larger than the server accepts."""

    code = "request_too_large"
    status = 413


class RateLimitedError(SluicewayError):
    """Too many requests: the upstream or a per-key limit said no; see ``retry_after``."""

    code = "rate_limited"
    status = 429
    retryable = True


class UpstreamAuthError(SluicewayError):
    """The upstream refused our credentials (401/403 there)."""

    code = "upstream_auth"
    status = 502


class UpstreamUnavailableError(SluicewayError):
    """The upstream could not be reached."""

    code = "upstream_unavailable"
    status = 503
    retryable = True


class UpstreamTimeoutError(SluicewayError):
    """The upstream took too long (first token, between tokens, or in total)."""

    code = "upstream_timeout"
    status = 504
    retryable = True


class UpstreamError(SluicewayError):
    """The upstream failed (5xx or a malformed answer), or refused the request (another 4xx:
    ``retryable=False``, since the same request would be refused again)."""

    code = "upstream_error"
    status = 502

    def __init__(self, message: str, *, retry_after: float | None = None, retryable: bool = True) -> None:
        super().__init__(message, retry_after=retry_after)
        self.refused = not retryable

    def to_event(self) -> ErrorEvent:
        return ErrorEvent(self.code, self.message, not self.refused, self.retry_after)


class OverloadedError(SluicewayError):
    """This server runs as many generations as it may; try again later."""

    code = "overloaded"
    status = 429
    retryable = True


class CancelledError(SluicewayError):
    """The generation was cancelled by the client."""

    code = "cancelled"
    status = 499


class InternalError(SluicewayError):
    """A bug in sluiceway; the details are logged, never sent."""

    code = "internal"
    status = 500


class StreamNotFoundError(SluicewayError):
    """No live or retained stream has this id (it never existed or its retention ended)."""

    code = "stream_not_found"
    status = 404


class ConversationNotFoundError(SluicewayError):
    """No conversation has this id (never had, or it was deleted)."""

    code = "not_found"
    status = 404


class ReaderLaggedError(SluicewayError):
    """A reader fell so far behind that the events it needs next left the bounded log."""

    code = "reader_lagged"
    status = 409
    retryable = True


class ShuttingDownError(SluicewayError):
    """The server is shutting down: no new generation starts; a running one ended at the grace."""

    code = "shutting_down"
    status = 503
    retryable = True


class StoreUnavailableError(SluicewayError):
    """The conversation database could not be reached or refused the operation."""

    code = "store_unavailable"
    status = 503
    retryable = True


ERROR_CLASSES: dict[str, type[SluicewayError]] = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        PermissionDeniedError,
        UnknownModelError,
        RequestTooLargeError,
        RateLimitedError,
        UpstreamAuthError,
        UpstreamUnavailableError,
        UpstreamTimeoutError,
        UpstreamError,
        OverloadedError,
        CancelledError,
        InternalError,
        StreamNotFoundError,
        ConversationNotFoundError,
        ReaderLaggedError,
        ShuttingDownError,
        StoreUnavailableError,
    )
}


def error_from_code(code: str, message: str, retry_after: float | None = None) -> SluicewayError:
    """Rebuild the error for a code received over the wire (clients use this)."""
    cls = ERROR_CLASSES.get(code, SluicewayError)
    err = cls(message, retry_after=retry_after)
    if cls is SluicewayError:
        err.code = code
    return err
