"""Python client for a sluiceway server: typed events, resume after a dropped connection, cancel.

::

    from sluiceway.client import Client

    with Client("http://127.0.0.1:8000") as client:
        with client.stream_chat("Hello there", model="echo") as stream:
            for text in stream.text_stream:
                print(text, end="", flush=True)
        print(stream.result.ttft_ms)

:class:`AsyncClient` is the same with ``async``/``await``. Errors are the server's own
:class:`~sluiceway.errors.SluicewayError` subclasses (by their code), plus
:class:`ConnectionFailedError` and :class:`StreamProtocolError`.

The clients (and httpx under them) load on first access, so importing this package, or a module of
it, costs a process that never talks HTTP (``sluiceway serve`` loads the CLI) next to nothing.
"""

import typing as _typing

from sluiceway._lazy import lazy_exports as _lazy_exports
from sluiceway.client._errors import ConnectionFailedError, StreamProtocolError
from sluiceway.client._types import DEFAULT_URL, ChatResult, Messages
from sluiceway.errors import SluicewayError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage

if _typing.TYPE_CHECKING:
    from sluiceway.client._async import AsyncChatStream, AsyncClient
    from sluiceway.client._sync import ChatStream, Client

_LAZY = {
    "AsyncChatStream": "sluiceway.client._async",
    "AsyncClient": "sluiceway.client._async",
    "ChatStream": "sluiceway.client._sync",
    "Client": "sluiceway.client._sync",
}

__all__ = [
    "DEFAULT_URL",
    "AsyncChatStream",
    "AsyncClient",
    "ChatResult",
    "ChatStream",
    "Client",
    "ConnectionFailedError",
    "ErrorEvent",
    "Event",
    "Finish",
    "Messages",
    "SluicewayError",
    "StreamProtocolError",
    "TextDelta",
    "Usage",
]


__getattr__, __dir__ = _lazy_exports(__name__, _LAZY)
