"""The asyncio client: :class:`AsyncClient` and the :class:`AsyncChatStream` it returns (I/O only;
the protocol lives in :mod:`sluiceway.client._core`, shared with the blocking client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from sluiceway.client._core import StreamCore, StreamView, chat_core, resume_core
from sluiceway.client._errors import ConnectionFailedError, error_from_response
from sluiceway.client._types import (
    DEFAULT_URL,
    ChatOptions,
    ChatResult,
    HttpCall,
    Messages,
    cancel_call,
    client_headers,
)
from sluiceway.events import Event, TextDelta

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncChatStream(StreamView):
    """One answer as it streams: ``async for`` it for events, or use :attr:`text_stream`.

    Nothing is sent until iteration starts. Use ``async with`` (or call :meth:`aclose`) so that
    leaving early closes the connection; :meth:`cancel` also tells the server to stop.
    """

    def __init__(self, http: httpx.AsyncClient, core: StreamCore) -> None:
        self._http = http
        self._core = core
        self._events = self._run()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """Only the text pieces, in order."""
        return self._texts()

    async def final_result(self) -> ChatResult:
        """Read the rest of the stream and return the whole answer."""
        async for _ in self._events:
            pass
        return self._core.result()

    async def cancel(self) -> bool:
        """Ask the server to stop generating, then close the connection. ``True`` if the server
        confirmed; ``False`` if it could not be asked (no stream yet, no cancel endpoint, no network).
        Unless the answer had already finished, ``result.finish_reason`` is then ``cancelled``."""
        try:
            return self._core.stream_id is not None and await _cancel(self._http, self._core.stream_id)
        finally:
            self._core.cancelled()
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (the server cancels the generation after its grace period)."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _texts(self) -> AsyncIterator[str]:
        async for event in self._events:
            if isinstance(event, TextDelta):
                yield event.text

    async def _run(self) -> AsyncGenerator[Event, None]:
        core = self._core
        call = core.call
        while True:
            try:
                async with self._http.stream(
                    call.method, call.path, json=call.json, params=call.params
                ) as response:
                    if not core.accepts(response.status_code, response.headers):
                        raise core.refusal(response.status_code, response.headers, await response.aread())
                    async for chunk in response.aiter_bytes():
                        for event in core.feed(chunk):
                            yield event
                    for event in core.end_of_body():
                        yield event
            except httpx.TransportError as exc:
                if core.done:
                    return
                call = core.dropped(exc)
            else:
                if core.done:
                    return
                call = core.dropped(None)
            await asyncio.sleep(core.backoff_s)


class AsyncClient:
    """The asyncio twin of :class:`~sluiceway.client.Client`: same arguments, awaitable methods."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        max_resumes: int = 3,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.max_resumes = max_resumes
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout), headers=client_headers(headers, api_key)
        )

    def stream_chat(self, messages: Messages, **options: Unpack[ChatOptions]) -> AsyncChatStream:
        """Stream the answer to ``messages`` (a string is one user message) as events.

        ``options``: ``model``, ``max_tokens``, ``system``, ``temperature``, ``conversation_id``
        and ``extra`` (fields merged into the request body as they are).
        """
        return AsyncChatStream(self._http, chat_core(messages, max_resumes=self.max_resumes, **options))

    async def chat(self, messages: Messages, **options: Unpack[ChatOptions]) -> ChatResult:
        """The whole answer at once (streamed underneath); options as for :meth:`stream_chat`."""
        async with self.stream_chat(messages, **options) as stream:
            return await stream.final_result()

    def resume(self, stream_id: str, after: int = 0) -> AsyncChatStream:
        """Read an existing stream from after event ``after`` (0: from its start)."""
        return AsyncChatStream(self._http, resume_core(stream_id, after, max_resumes=self.max_resumes))

    async def cancel(self, stream_id: str) -> bool:
        """Stop a stream's generation on the server; ``True`` if the server confirmed."""
        return await _cancel(self._http, stream_id)

    async def models(self) -> list[str]:
        """The names of the models the server serves, its default first."""
        response = await self._request(HttpCall("GET", "/v1/models"))
        return [str(model["id"]) for model in response.json()["data"]]

    async def health(self) -> dict[str, Any]:
        """The server's ``/healthz`` document."""
        body: dict[str, Any] = (await self._request(HttpCall("GET", "/healthz"))).json()
        return body

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(self, call: HttpCall) -> httpx.Response:
        try:
            response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"could not reach the server: {exc}") from exc
        if response.is_error:
            raise error_from_response(response.status_code, response.headers, response.content)
        return response


async def _cancel(http: httpx.AsyncClient, stream_id: str) -> bool:
    call = cancel_call(stream_id)
    try:
        return (await http.request(call.method, call.path, timeout=5.0)).is_success
    except httpx.TransportError:
        return False
