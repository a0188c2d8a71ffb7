"""Local OpenAI and Anthropic upstreams that speak the vendors' exact streaming wire formats.

Tests and benchmarks point the real ``openai``/``anthropic`` SDKs (through sluiceway's providers) at
these instead of the internet. Each upstream is an ASGI app; :func:`run_upstream` serves one under a
real uvicorn on a free loopback port, in a thread with its own event loop, so any test or benchmark
(sync or async, any loop scope) can use it.

How it works: a :class:`Script` says how the next answers behave (reply text, length, cadence,
failures, hangs); tests swap ``upstream.script`` between requests. Every stream is planned up front
into pre-encoded frames (a head, one frame per token, a tail), so the per-token work is one
``send``. While a stream runs, a second task waits on ``receive()`` for ``http.disconnect``; the
first of the two to finish cancels the other, and a disconnect before the tail is recorded in the
:class:`UpstreamLog` with the ``time.perf_counter()`` at which the upstream noticed (cancel latency
is ``disconnect.at - the moment the client closed``). The log also keeps every request's headers
and body, and the number of open requests, behind a condition that other threads can wait on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from sluiceway.providers.echo import split_words

Hang = Literal["before_headers", "before_first_token"]
Reason = Literal["stop", "length", "stop_sequence"]


@dataclass
class Script:
    """How the upstream answers, request after request, until a test replaces it.

    ``reply`` is the answer (``None`` echoes the last user message); ``tokens`` repeats its words to
    exactly that many pieces. ``fail_status`` answers every request with that HTTP error (with
    ``retry_after``/``retry_after_ms`` headers if set); ``fail_after`` sends that many tokens and
    then an in-band error event. ``hang`` never sends headers, or never sends the first token.
    ``finish_reason`` overrides the vendor's finish/stop reason. ``api_key`` set: other keys get 401.
    """

    reply: str | None = None
    tokens: int | None = None
    delay_ms: float = 0.0
    first_token_delay_ms: float = 0.0
    fail_status: int | None = None
    fail_message: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    fail_after: int | None = None
    hang: Hang | None = None
    finish_reason: str | None = None
    api_key: str | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the upstream received it."""

    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    at: float

    @property
    def api_key(self) -> str:
        """The key sent as ``x-api-key`` or as an ``Authorization: Bearer`` token (``""`` if none)."""
        return key_of(self.headers)


@dataclass(frozen=True)
class Disconnect:
    """A client that left before its stream ended, and when the upstream noticed."""

    path: str
    at: float
    tokens_sent: int


@dataclass
class UpstreamLog:
    """What an upstream saw. Written on the server's thread; read and waited on from any other.

    ``active`` counts open requests; ``completed`` counts streams that sent their last frame.
    """

    requests: list[ReceivedRequest] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    active: int = 0
    completed: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def wait_for(self, predicate: Callable[[UpstreamLog], bool], within: float = 5.0) -> bool:
        """Block until ``predicate(log)`` holds; ``False`` if ``within`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), within)

    async def await_for(self, predicate: Callable[[UpstreamLog], bool], within: float = 5.0) -> bool:
        """:meth:`wait_for` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, within)

    def clear(self) -> None:
        """Forget every record (the ``active`` count stays true)."""
        with self._changed:
            self.requests.clear()
            self.disconnects.clear()
            self.completed = 0

    def opened(self, delta: int) -> None:
        """A request began (``+1``) or ended (``-1``)."""
        with self._changed:
            self.active += delta
            self._changed.notify_all()

    def received(self, request: ReceivedRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def disconnected(self, disconnect: Disconnect) -> None:
        with self._changed:
            self.disconnects.append(disconnect)
            self._changed.notify_all()

    def finished(self) -> None:
        with self._changed:
            self.completed += 1
            self._changed.notify_all()


def token_frames(template: bytes, pieces: list[str]) -> list[bytes]:
    """``template`` once per piece, its ``"\\u0000"`` string replaced by the piece (each encoded once)."""
    prefix, _, suffix = template.partition(b'"\\u0000"')
    frames = {piece: prefix + dumps(piece) + suffix for piece in set(pieces)}
    return [frames[piece] for piece in pieces]


@dataclass(frozen=True)
class Plan:
    """A stream decided up front: pre-encoded head, one frame per token, and tail."""

    head: bytes
    tokens: list[bytes]
    tail: bytes


@dataclass(frozen=True)
class Reply:
    """The answer's pieces, why they end, and the stop sequence that ended them (if one did)."""

    pieces: list[str]
    reason: Reason = "stop"
    stop_sequence: str | None = None


def plan_reply(script: Script, prompt: str, max_tokens: int | None, stops: list[str]) -> Reply:
    """The pieces to send: the script's (or the echoed) words, cut by a stop sequence or ``max_tokens``."""
    pieces = split_words(prompt if script.reply is None else script.reply)
    if script.tokens is not None:
        pieces = list(itertools.islice(itertools.cycle(pieces or ["token "]), script.tokens))
    text = "".join(pieces)
    found = [(at, stop) for stop in stops if stop and (at := text.find(stop)) >= 0]
    reply = Reply(pieces)
    if found:
        at, stop = min(found)
        reply = Reply(split_words(text[:at]), "stop_sequence", stop)
    if max_tokens is not None and len(reply.pieces) > max_tokens:
        reply = Reply(reply.pieces[:max_tokens], "length")
    return reply


def content_text(content: object) -> str:
    """The text of a message's ``content``: a string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the newest ``user`` message (what the mock echoes)."""
    users = (m.get("content") for m in reversed(messages) if m.get("role") == "user")
    return content_text(next(users, ""))


def count_words(texts: list[str]) -> int:
    """The mock's token count: word-sized pieces, as the ``echo`` provider counts them."""
    return sum(len(split_words(t)) for t in texts)


def dumps(value: object) -> bytes:
    """Compact JSON, UTF-8, as the vendors send it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


_BURST = 32
"""At zero delay, the tokens sent between two turns of the event loop (when a disconnect is seen)."""


class EventStream:
    """A ``text/event-stream`` response that plays a :class:`Plan` and notices the client leaving."""

    def __init__(self, plan: Plan, script: Script, log: UpstreamLog, path: str) -> None:
        self.plan = plan
        self.script = script
        self.log = log
        self.path = path
        self.tokens_sent = 0
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, receive, group.cancel_scope)
            await self._play(send)
            group.cancel_scope.cancel()

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.finished:
            self.log.disconnected(Disconnect(self.path, time.perf_counter(), self.tokens_sent))
        scope.cancel()

    async def _play(self, send: Send) -> None:
        if self.script.hang == "before_headers":
            await anyio.sleep_forever()
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.plan.head, "more_body": True})
        if self.script.hang == "before_first_token":
            await anyio.sleep_forever()
        delay, first = self.script.delay_ms / 1000, self.script.first_token_delay_ms / 1000
        for frame in self.plan.tokens:
            if delay or first or self.tokens_sent % _BURST == 0:
                await anyio.sleep(delay + first)
            first = 0.0
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            self.tokens_sent += 1
        self.finished = True
        await send({"type": "http.response.body", "body": self.plan.tail, "more_body": False})
        self.log.finished()


class Upstream:
    """Shared machinery: routing, the open-request count, request records and scripted failures."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.log = UpstreamLog()
        self._ids = itertools.count(1)
        self._router = Router(routes=self.routes())

    def routes(self) -> list[Route]:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.log.opened(+1)
        try:
            await self._router(scope, receive, send)
        finally:
            self.log.opened(-1)

    def reset(self, script: Script | None = None) -> None:
        """Start over with ``script`` (or the default one) and an empty log."""
        self.script = script or Script()
        self.log.clear()

    async def receive(self, request: Request) -> tuple[Script, dict[str, Any]]:
        """Record ``request`` and return the script that answers it with the parsed body."""
        body = await request.json()
        seen = ReceivedRequest(request.url.path, dict(request.headers), body, time.perf_counter())
        self.log.received(seen)
        return self.script, body

    def refusal(self, script: Script, request: Request) -> Response | None:
        """The scripted (or wrong-key) HTTP error for this request, if any."""
        status = script.fail_status
        if status is None and script.api_key is not None:
            status = None if key_of(request.headers) == script.api_key else 401
        if status is None:
            return None
        message = script.fail_message or _default_message(status, key_of(request.headers))
        headers = {"retry-after": script.retry_after, "retry-after-ms": script.retry_after_ms}
        present = {k: v for k, v in headers.items() if v is not None}
        return JSONResponse(self.error_body(status, message), status, headers=present)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def stream(self, plan: Plan, script: Script, request: Request) -> EventStream:
        return EventStream(plan, script, self.log, request.url.path)


def key_of(headers: Mapping[str, str]) -> str:
    """The API key in ``headers``: ``x-api-key``, else the ``Authorization: Bearer`` token."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else "")


def _default_message(status: int, key: str) -> str:
    if status == 401:  # echo the key in full, as a worst case for redaction
        return f"Incorrect API key provided: {key}."
    return {403: "Permission denied.", 429: "Rate limit reached.", 529: "Overloaded."}.get(
        status, f"Upstream failed with status {status}."
    )


_OPENAI_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}


class OpenAIUpstream(Upstream):
    """``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models``, as OpenAI sends them."""

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]

    async def models(self, request: Request) -> Response:
        model = {"id": "mock-model", "object": "model", "created": 0, "owned_by": "sluiceway"}
        return JSONResponse({"object": "list", "data": [model]})

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    async def chat(self, request: Request) -> Response | EventStream:
        script, body = await self.receive(request)
        refused = self.refusal(script, request)
        if refused is not None:
            return refused
        messages = body.get("messages") or []
        stop = body.get("stop") or []
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        reply = plan_reply(script, last_user_text(messages), limit, [stop] if isinstance(stop, str) else stop)
        pieces = reply.pieces
        finish = script.finish_reason or ("length" if reply.reason == "length" else "stop")
        usage = _openai_usage(count_words([content_text(m.get("content")) for m in messages]), len(pieces))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            model, usage_chunk = body.get("model", ""), usage if include_usage else None
            return self.stream(self.plan_stream(model, pieces, finish, usage_chunk, script), script, request)
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return JSONResponse(
            {**self._common(body.get("model", ""), "chat.completion"), "choices": [choice], "usage": usage}
        )

    def _common(self, model: str, kind: str) -> dict[str, Any]:
        return {
            "id": self.new_id("chatcmpl-mock"),
            "object": kind,
            "created": int(time.time()),
            "model": model,
        }

    def plan_stream(
        self, model: str, pieces: list[str], finish: str, usage: dict[str, int] | None, script: Script
    ) -> Plan:
        """Pre-encode a chunk stream: role delta, content deltas, finish chunk, usage chunk, ``[DONE]``."""
        common = self._common(model, "chat.completion.chunk")
        extra = {"usage": None} if usage is not None else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + dumps({**common, "choices": [choice], **extra}) + b"\n\n"

        tokens = token_frames(chunk({"content": "\0"}, None), pieces)
        tail = chunk({}, finish)
        if usage is not None:
            tail += b"data: " + dumps({**common, "choices": [], "usage": usage}) + b"\n\n"
        tail += b"data: [DONE]\n\n"
        if script.fail_after is not None and script.fail_after < len(tokens):
            error = self.error_body(500, script.fail_message or "The server had an error while processing.")
            tokens, tail = tokens[: script.fail_after], b"data: " + dumps(error) + b"\n\n"
        return Plan(chunk({"role": "assistant", "content": ""}, None), tokens, tail)


def _openai_usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_SAMPLING = frozenset({"temperature", "top_p", "top_k"})
_ANTHROPIC_REASONS: dict[Reason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps({"type": event, **data}) + b"\n\n"


class AnthropicUpstream(Upstream):
    """``POST /v1/messages`` (streamed or not), as Anthropic sends it.

    Like the real API at version 2026-10-21 (what SDK 2.x sends), it refuses a missing
    ``max_tokens`` and any sampling parameter with a 400.
    """

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self.messages, methods=["POST"])]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    async def messages(self, request: Request) -> Response | EventStream:
        script, body = await self.receive(request)
        refused = self.refusal(script, request) or self._invalid(body, request)
        if refused is not None:
            return refused
        messages = body.get("messages") or []
        stops = body.get("stop_sequences") or []
        reply = plan_reply(script, last_user_text(messages), body["max_tokens"], stops)
        texts = [content_text(body.get("system")), *(content_text(m.get("content")) for m in messages)]
        message = {
            "id": self.new_id("msg_mock"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": count_words(texts), "output_tokens": 1},
        }
        reason = script.finish_reason or _ANTHROPIC_REASONS[reply.reason]
        stop = {"stop_reason": reason, "stop_sequence": reply.stop_sequence}
        if body.get("stream"):
            return self.stream(self.plan_stream(message, stop, reply.pieces, script), script, request)
        usage = {**message["usage"], "output_tokens": len(reply.pieces)}
        content = [{"type": "text", "text": "".join(reply.pieces)}]
        return JSONResponse({**message, **stop, "content": content, "usage": usage})

    def _invalid(self, body: dict[str, Any], request: Request) -> Response | None:
        if not isinstance(body.get("max_tokens"), int):
            problem = "max_tokens: Field required"
        elif request.headers.get("anthropic-version", "") >= "2026-10-21" and _SAMPLING & body.keys():
            problem = f"{min(_SAMPLING & body.keys())}: Extra inputs are not permitted"
        else:
            return None
        return JSONResponse(self.error_body(400, problem), 400)

    def plan_stream(
        self, message: dict[str, Any], stop: dict[str, Any], pieces: list[str], script: Script
    ) -> Plan:
        """Pre-encode the event stream from ``message_start`` to ``message_stop``."""
        head = (
            _sse("message_start", {"message": message})
            + _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            + _sse("ping", {})
        )
        delta = _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "\0"}})
        tokens = token_frames(delta, pieces)
        usage = {"output_tokens": len(pieces)}
        tail = (
            _sse("content_block_stop", {"index": 0})
            + _sse("message_delta", {"delta": stop, "usage": usage})
            + _sse("message_stop", {})
        )
        if script.fail_after is not None and script.fail_after < len(tokens):
            error = self.error_body(529, script.fail_message or "Overloaded")
            tokens, tail = tokens[: script.fail_after], _sse("error", {"error": error["error"]})
        return Plan(head, tokens, tail)


class _Server(uvicorn.Server):
    """A uvicorn server that says when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@contextmanager
def run_upstream(app: ASGIApp, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` under uvicorn on a free ``127.0.0.1`` port; yield its base URL.

    The server runs in a daemon thread with its own event loop and stops when the block exits
    (open streams are given one second, then cancelled).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        interface="asgi3",
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"upstream:{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    try:
        while not server.listening.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the upstream on port {port} did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()
