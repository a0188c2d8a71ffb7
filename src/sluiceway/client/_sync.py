"""The blocking client: :class:`Client` and the :class:`ChatStream` it returns (I/O only; the
protocol lives in :mod:`sluiceway.client._core`)."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
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


class ChatStream(StreamView):
    """One answer as it streams: iterate it for events, or use :attr:`text_stream`.

    Nothing is sent until iteration starts. Use it as a context manager (or call :meth:`close`)
    so that leaving early closes the connection; :meth:`cancel` also tells the server to stop.
    """

    def __init__(self, http: httpx.Client, core: StreamCore) -> None:
        self._http = http
        self._core = core
        self._events = self._run()

    def __iter__(self) -> Iterator[Event]:
        return self._events

    @property
    def text_stream(self) -> Iterator[str]:
        """Only the text pieces, in order."""
        return (event.text for event in self._events if isinstance(event, TextDelta))

    def final_result(self) -> ChatResult:
        """Read the rest of the stream and return the whole answer."""
        for _ in self._events:
            pass
        return self._core.result()

    def cancel(self) -> bool:
        """Ask the server to stop generating, then close the connection. ``True`` if the server
        confirmed; ``False`` if it could not be asked (no stream yet, no cancel endpoint, no network).
        Unless the answer had already finished, ``result.finish_reason`` is then ``cancelled``."""
        try:
            return self._core.stream_id is not None and _cancel(self._http, self._core.stream_id)
        finally:
            self._core.cancelled()
            self.close()

    def close(self) -> None:
        """Close the connection (the server cancels the generation after its grace period)."""
        self._events.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> Generator[Event, None, None]:
        core = self._core
        call = core.call
        while True:
            try:
                with self._http.stream(
                    call.method, call.path, json=call.json, params=call.params
                ) as response:
                    if not core.accepts(response.status_code, response.headers):
                        raise core.refusal(response.status_code, response.headers, response.read())
                    for chunk in response.iter_bytes():
                        yield from core.feed(chunk)
                    yield from core.end_of_body()
            except httpx.TransportError as exc:
                if core.done:
                    return
                call = core.dropped(exc)
            else:
                if core.done:
                    return
                call = core.dropped(None)
            time.sleep(core.backoff_s)


class Client:
    """A blocking client for a sluiceway server's own streaming API.

    ``timeout`` bounds connecting and each wait for bytes (heartbeats keep a slow stream alive);
    ``max_resumes`` bounds the reconnections in a row after a dropped connection; ``api_key`` is
    sent as ``Authorization: Bearer``; ``http`` replaces the ``httpx.Client`` (give it the
    ``base_url``; its owner closes it).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        max_resumes: int = 3,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.max_resumes = max_resumes
        self._owns_http = http is None
        self._http = http or httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout), headers=client_headers(headers, api_key)
        )

    def stream_chat(self, messages: Messages, **options: Unpack[ChatOptions]) -> ChatStream:
        """Stream the answer to ``messages`` (a string is one user message) as events.

        ``options``: ``model``, ``max_tokens``, ``system``, ``temperature``, ``conversation_id``
        and ``extra`` (fields merged into the request body as they are).
        """
        return ChatStream(self._http, chat_core(messages, max_resumes=self.max_resumes, **options))

    def chat(self, messages: Messages, **options: Unpack[ChatOptions]) -> ChatResult:
        """The whole answer at once (streamed underneath); options as for :meth:`stream_chat`."""
        with self.stream_chat(messages, **options) as stream:
            return stream.final_result()

    def resume(self, stream_id: str, after: int = 0) -> ChatStream:
        """Read an existing stream from after event ``after`` (0: from its start)."""
        return ChatStream(self._http, resume_core(stream_id, after, max_resumes=self.max_resumes))

    def cancel(self, stream_id: str) -> bool:
        """Stop a stream's generation on the server; ``True`` if the server confirmed."""
        return _cancel(self._http, stream_id)

    def models(self) -> list[str]:
        """The names of the models the server serves, its default first."""
        response = self._request(HttpCall("GET", "/v1/models"))
        return [str(model["id"]) for model in response.json()["data"]]

    def health(self) -> dict[str, Any]:
        """The server's ``/healthz`` document."""
        body: dict[str, Any] = self._request(HttpCall("GET", "/healthz")).json()
        return body

    def close(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, call: HttpCall) -> httpx.Response:
        try:
            response = self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"could not reach the server: {exc}") from exc
        if response.is_error:
            raise error_from_response(response.status_code, response.headers, response.content)
        return response


def _cancel(http: httpx.Client, stream_id: str) -> bool:
    call = cancel_call(stream_id)
    try:
        return http.request(call.method, call.path, timeout=5.0).is_success
    except httpx.TransportError:
        return False
