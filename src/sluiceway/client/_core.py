"""The sans-IO heart of a chat stream, shared by :class:`Client` and :class:`AsyncClient`.

How it works: the I/O layer asks :class:`StreamCore` which HTTP call to make, hands it the
response's status and headers, then every piece of the body as it arrives; the core returns the
sluiceway events those bytes complete (``TextDelta``, ``Usage``, ``Finish``) and raises the server's
error for an in-band ``error`` event. It keeps everything needed to build the final
:class:`ChatResult` as it goes; a stream that ends without the server's ``Finish`` (an error, or the
reader's ``cancel()``) still gets a ``finish_reason``: ``error`` or ``cancelled``.

How resume works: the server names the stream in the ``X-Stream-Id`` header and gives every event
the SSE id ``<stream_id>:<seq>``. When the connection drops (a transport error, or the body ends
before ``data: [DONE]``) the I/O layer calls :meth:`StreamCore.dropped`, which answers with
``GET /chat/stream/{stream_id}?after=<last seq>`` (or raises :class:`ConnectionFailedError` once the
attempts are used up or nothing can be resumed). Events at or below the last seq seen are skipped,
so a server that replays too much never duplicates text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from sluiceway.client._errors import (
    ConnectionFailedError,
    StreamProtocolError,
    error_from_payload,
    error_from_response,
)
from sluiceway.client._types import ChatOptions, ChatResult, HttpCall, Messages, chat_call, resume_call
from sluiceway.errors import SluicewayError
from sluiceway.events import Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.wire.sse import ServerSentEvent, SSEDecoder

if TYPE_CHECKING:
    from typing_extensions import Unpack

Clock = Callable[[], float]
_NOT_RESUMABLE = frozenset({404, 405, 410, 501})
"""Statuses of a resume that mean the stream (or resuming itself) is gone, not that it failed."""


def parse_event_id(event_id: str | None) -> tuple[str | None, int | None]:
    """``"<stream_id>:<seq>"`` → ``(stream_id, seq)``; anything else → ``(None, None)``."""
    if not event_id:
        return None, None
    stream_id, sep, seq = event_id.rpartition(":")
    if not sep or not seq.isdigit():
        return None, None
    return stream_id or None, int(seq)


def events_from_payload(payload: Mapping[str, Any]) -> list[Event]:
    """The events one seed JSON object stands for; unknown types are ignored (newer servers)."""
    kind = payload.get("type")
    if kind == "chunk":
        return [TextDelta(str(payload.get("text", "")))]
    if kind == "error":
        raise error_from_payload(payload)
    if kind == "done":
        events: list[Event] = []
        usage = payload.get("usage")
        if isinstance(usage, dict):
            events.append(Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))))
        reason = cast(FinishReason, str(payload.get("finish_reason", "stop")))
        events.append(Finish(reason, _number(payload.get("ttft_ms")), _number(payload.get("tokens_per_s"))))
        return events
    return []


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Accumulator:
    """Builds the :class:`ChatResult` from events and the times they arrived."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.parts: list[str] = []
        self.first: float | None = None
        self.last: float | None = None
        self.deltas = 0
        self.usage: Usage | None = None
        self.finish: Finish | None = None
        self.ended: FinishReason | None = None  # how it ended when no Finish came: cancelled, error

    def add(self, event: Event, now: float) -> None:
        """Take one event into account."""
        if isinstance(event, TextDelta):
            self.parts.append(event.text)
            self.deltas += 1
            if self.first is None:
                self.first = now
            self.last = now
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish = event

    def result(self, stream_id: str | None = None, resumes: int = 0) -> ChatResult:
        """Everything so far as a result (partial until the ``Finish`` arrived)."""
        ttft = None if self.first is None else round((self.first - self.started) * 1000, 2)
        tokens = self.usage.output_tokens if self.usage is not None else self.deltas
        span = 0.0 if self.first is None or self.last is None else self.last - self.first
        tps = round((tokens - 1) / span, 2) if span > 0 and tokens > 1 else None
        return ChatResult(
            text="".join(self.parts),
            usage=self.usage,
            finish_reason=self.ended if self.finish is None else self.finish.reason,
            ttft_ms=ttft,
            tokens_per_s=tps,
            stream_id=stream_id,
            finish=self.finish,
            resumes=resumes,
        )


class StreamCore:
    """One chat stream's state across connections: which call next, bytes in, events out."""

    def __init__(self, call: HttpCall, *, max_resumes: int = 3, clock: Clock = time.perf_counter) -> None:
        self.call = call
        self.max_resumes = max_resumes
        self.clock = clock
        self.stream_id: str | None = None
        self.conversation_id: str | None = None
        self.last_seq = 0
        self.done = False
        self.resumes = 0
        self._attempts = 0
        self._sse = SSEDecoder()
        self.accumulator = Accumulator(clock())

    @property
    def backoff_s(self) -> float:
        """How long to wait before the next resume attempt."""
        return min(0.05 * 2.0 ** max(self._attempts - 1, 0), 2.0)

    def accepts(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether the response is the stream (or 204, nothing left to send); if so, note its id.
        ``False``: read the body and raise :meth:`refusal`."""
        if status == 204:
            self.done = True
            return True
        if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
            return False
        self.stream_id = headers.get("x-stream-id") or self.stream_id
        self.conversation_id = headers.get("x-conversation-id") or self.conversation_id
        self._sse = SSEDecoder()
        return True

    def refusal(self, status: int, headers: Mapping[str, str], body: bytes) -> SluicewayError:
        """The error to raise for a response that is not the stream."""
        self._end("error")
        if status == 200:
            kind = headers.get("content-type", "no content type")
            error: SluicewayError = StreamProtocolError(f"expected text/event-stream, got {kind}")
        else:
            error = error_from_response(status, headers, body)
        if self.resumes and (status in _NOT_RESUMABLE or isinstance(error, StreamProtocolError)):
            return ConnectionFailedError(f"the connection dropped and resuming failed: {error}")
        return error

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events completed by ``chunk``; the server's error is raised at an in-band error, after the
        events before it."""
        return self._events(self._sse.feed(chunk))

    def end_of_body(self) -> Iterator[Event]:
        """The body ended: the last events, if any. Check :attr:`done` afterwards."""
        return self._events(self._sse.flush())

    def dropped(self, cause: BaseException | None) -> HttpCall:
        """The connection broke before ``[DONE]``: the call that resumes, or raise."""
        why = "the stream ended early" if cause is None else str(cause) or type(cause).__name__
        if self.stream_id is None:
            self._end("error")
            raise ConnectionFailedError(f"could not stream from the server: {why}") from cause
        if self._attempts >= self.max_resumes:
            self._end("error")
            raise ConnectionFailedError(
                f"the connection dropped ({why}) and {self._attempts} resume attempts failed"
            ) from cause
        self._attempts += 1
        self.resumes += 1
        self.call = resume_call(self.stream_id, self.last_seq)
        return self.call

    def cancelled(self) -> None:
        """The reader stopped the stream (``cancel()``): unless it had finished, it ended ``cancelled``."""
        if self.stream_id is not None:
            self._end("cancelled")

    def result(self) -> ChatResult:
        """The answer so far (complete once :attr:`done`)."""
        return self.accumulator.result(self.stream_id, self.resumes)

    def _end(self, reason: FinishReason) -> None:
        """The stream ended without the server's ``Finish``; the result's ``finish_reason`` says why."""
        self.done = True
        if self.accumulator.finish is None and self.accumulator.ended is None:
            self.accumulator.ended = reason

    def _events(self, batch: list[ServerSentEvent]) -> Iterator[Event]:
        now: float | None = None
        for sse in batch:
            if sse.data == "[DONE]":
                self.done = True
                return
            stream_id, seq = parse_event_id(sse.id)
            if seq is not None:
                if seq <= self.last_seq:
                    continue
                self.last_seq = seq
                self._attempts = 0
                self.stream_id = self.stream_id or stream_id
            now = self.clock() if now is None else now
            for event in self._decode(sse.data):
                self.accumulator.add(event, now)
                self.done = self.done or isinstance(event, Finish)
                yield event

    def _decode(self, data: str) -> list[Event]:
        try:
            payload = json.loads(data)
        except ValueError:
            self._end("error")
            raise StreamProtocolError(f"an event is not JSON: {data[:80]!r}") from None
        if not isinstance(payload, dict):
            return []
        try:
            return events_from_payload(payload)
        except SluicewayError:
            self._end("error")
            raise


class StreamView:
    """What the sync and async streams share: the state of their :class:`StreamCore`."""

    _core: StreamCore

    @property
    def stream_id(self) -> str | None:
        """The server's id for this stream (known once the response began)."""
        return self._core.stream_id

    @property
    def conversation_id(self) -> str | None:
        """The stored conversation this answer belongs to (``X-Conversation-Id``), if any."""
        return self._core.conversation_id

    @property
    def result(self) -> ChatResult:
        """The answer so far (complete once the stream ended)."""
        return self._core.result()


def chat_core(messages: Messages, *, max_resumes: int, **options: Unpack[ChatOptions]) -> StreamCore:
    """A core that starts by asking for a new answer to ``messages``."""
    return StreamCore(chat_call(messages, **options), max_resumes=max_resumes)


def resume_core(stream_id: str, after: int, *, max_resumes: int) -> StreamCore:
    """A core that starts by reading an existing stream after event ``after``."""
    core = StreamCore(resume_call(stream_id, after), max_resumes=max_resumes)
    core.stream_id, core.last_seq = stream_id, after
    return core
