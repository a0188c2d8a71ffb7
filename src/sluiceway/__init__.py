"""sluiceway: stream LLM answers token by token from any model to any client protocol."""

from sluiceway.errors import (
    CancelledError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    SluicewayError,
    UnknownModelError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import ChatRequest, Message

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "ChatRequest",
    "ErrorEvent",
    "Event",
    "Finish",
    "InternalError",
    "InvalidRequestError",
    "Message",
    "OverloadedError",
    "RateLimitedError",
    "SluicewayError",
    "TextDelta",
    "UnknownModelError",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "Usage",
    "__version__",
]
