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
"""

from sluiceway.client._async import AsyncChatStream, AsyncClient
from sluiceway.client._errors import ConnectionFailedError, StreamProtocolError
from sluiceway.client._sync import DEFAULT_URL, ChatStream, Client
from sluiceway.client._types import ChatResult, Messages
from sluiceway.errors import SluicewayError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage

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
