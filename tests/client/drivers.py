"""The same scenarios through :class:`Client` and :class:`AsyncClient`, so one suite tests both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sluiceway.client import AsyncClient, ChatResult, Client
from sluiceway.errors import SluicewayError
from sluiceway.events import Event


@dataclass
class Outcome:
    """What a stream yielded, its result, and the error that ended it (if any)."""

    events: list[Event]
    result: ChatResult
    error: SluicewayError | None = None
    stream_id: str | None = None


class SyncDriver:
    kind = "sync"

    def __init__(self, url: str, **client: Any) -> None:
        self.url, self.client = url, client

    def collect(self, messages: Any, **options: Any) -> Outcome:
        with Client(self.url, **self.client) as client, client.stream_chat(messages, **options) as stream:
            return _drain(stream, iter(stream))

    def texts(self, messages: Any, **options: Any) -> list[str]:
        with Client(self.url, **self.client) as client, client.stream_chat(messages, **options) as stream:
            return list(stream.text_stream)

    def chat(self, messages: Any, **options: Any) -> ChatResult:
        with Client(self.url, **self.client) as client:
            return client.chat(messages, **options)

    def cancel_after(self, n: int, messages: Any, **options: Any) -> tuple[Outcome, bool]:
        with Client(self.url, **self.client) as client, client.stream_chat(messages, **options) as stream:
            events = [event for _, event in zip(range(n), stream, strict=False)]
            confirmed = stream.cancel()
            return Outcome(events, stream.result, None, stream.stream_id), confirmed

    def resume(self, stream_id: str, after: int) -> Outcome:
        with Client(self.url, **self.client) as client, client.resume(stream_id, after) as stream:
            return _drain(stream, iter(stream))


def _drain(stream: Any, events_iter: Any) -> Outcome:
    events: list[Event] = []
    try:
        events.extend(events_iter)
    except SluicewayError as exc:
        return Outcome(events, stream.result, exc, stream.stream_id)
    return Outcome(events, stream.result, None, stream.stream_id)


class AsyncDriver:
    kind = "async"

    def __init__(self, url: str, **client: Any) -> None:
        self.url, self.client = url, client

    def collect(self, messages: Any, **options: Any) -> Outcome:
        async def run() -> Outcome:
            async with (
                AsyncClient(self.url, **self.client) as client,
                client.stream_chat(messages, **options) as stream,
            ):
                return await _adrain(stream)

        return asyncio.run(run())

    def texts(self, messages: Any, **options: Any) -> list[str]:
        async def run() -> list[str]:
            async with (
                AsyncClient(self.url, **self.client) as client,
                client.stream_chat(messages, **options) as stream,
            ):
                return [text async for text in stream.text_stream]

        return asyncio.run(run())

    def chat(self, messages: Any, **options: Any) -> ChatResult:
        async def run() -> ChatResult:
            async with AsyncClient(self.url, **self.client) as client:
                return await client.chat(messages, **options)

        return asyncio.run(run())

    def cancel_after(self, n: int, messages: Any, **options: Any) -> tuple[Outcome, bool]:
        async def run() -> tuple[Outcome, bool]:
            async with (
                AsyncClient(self.url, **self.client) as client,
                client.stream_chat(messages, **options) as stream,
            ):
                events: list[Event] = []
                async for event in stream:
                    events.append(event)
                    if len(events) == n:
                        break
                confirmed = await stream.cancel()
                return Outcome(events, stream.result, None, stream.stream_id), confirmed

        return asyncio.run(run())

    def resume(self, stream_id: str, after: int) -> Outcome:
        async def run() -> Outcome:
            async with (
                AsyncClient(self.url, **self.client) as client,
                client.resume(stream_id, after) as stream,
            ):
                return await _adrain(stream)

        return asyncio.run(run())


async def _adrain(stream: Any) -> Outcome:
    events: list[Event] = []
    try:
        async for event in stream:
            events.append(event)
    except SluicewayError as exc:
        return Outcome(events, stream.result, exc, stream.stream_id)
    return Outcome(events, stream.result, None, stream.stream_id)


Driver = SyncDriver | AsyncDriver
DRIVERS = {"sync": SyncDriver, "async": AsyncDriver}
