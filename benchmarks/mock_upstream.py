"""A lean OpenAI-compatible streaming upstream for the relay benchmark: raw asyncio (uvloop), no framework.

Why not :class:`sluiceway.testing.upstreams.OpenAIUpstream`: that one runs under uvicorn with a
Starlette router, two tasks and an ASGI ``send`` per token; measured alone it is the bottleneck
(see docs/benchmarks.md). This one parses the request line, headers and JSON body, then writes
pre-encoded HTTP chunks straight to the transport, so a token costs one ``transport.write`` (and at
0 ms cadence, a turn of the event loop every :data:`BURST` tokens so that streams interleave).

What a request gets: ``POST /v1/chat/completions`` with ``"stream": true`` answers ``max_tokens``
(or ``max_completion_tokens``, default 16) content chunks (`` w0`` … `` w63``, cycled), then the
finish chunk, the usage chunk when ``stream_options.include_usage`` is set, and ``data: [DONE]``.
The model name picks the cadence: ``mock-d20`` waits 20 ms between tokens, ``mock-d0`` none. A
non-streaming request gets a whole ``chat.completion``. Keep-alive is supported (the relays pool
their upstream connections).

Cancel latency: a user message containing ``cancel-<tag>`` marks the stream; when its connection
closes before the last chunk, ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable across processes
of this machine) is recorded under the tag. ``GET /disconnects`` returns those records as JSON and
``GET /stats`` the counts of streams started, completed and abandoned.

Run: ``python benchmarks/mock_upstream.py --port 9100`` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

BURST = 16
WORDS = [f" w{i}" for i in range(64)]
"""Distinct pieces, cycled (LiteLLM aborts a stream that repeats one chunk 100 times)."""
T = TypeVar("T")
_CANCEL_TAG = re.compile(r"cancel-[A-Za-z0-9_-]+")
_MODEL_DELAY = re.compile(r"-d(\d+(?:\.\d+)?)$")


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Stats:
    """What the upstream saw, for ``GET /stats`` and ``GET /disconnects``."""

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.abandoned = 0
        self.disconnects: dict[str, float] = {}


class Stream:
    """One streamed answer: pre-encoded frames, written on a timer or in bursts."""

    def __init__(
        self, conn: Connection, model: str, tokens: int, usage: bool, tag: str | None, keep: bool
    ) -> None:
        self.conn = conn
        self.tag = tag
        self.keep = keep
        self.left = tokens
        match = _MODEL_DELAY.search(model)
        self.delay = float(match.group(1)) / 1000 if match else 0.0
        common = {"id": f"chatcmpl-{id(self):x}", "object": "chat.completion.chunk", "created": 0}
        common["model"] = model

        def frame(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**common, "choices": [choice]})

        self.head = chunk(frame({"role": "assistant", "content": ""}, None))
        self.tokens = [chunk(frame({"content": word}, None)) for word in WORDS]
        self.sent = 0
        tail = frame({}, "length")
        if usage:
            counts = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
            tail += sse({**common, "choices": [], "usage": counts})
        self.tail = chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.done = False
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None

    def start(self) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        if not self.keep:
            head += b"connection: close\r\n"
        self.conn.transport.write(head + b"\r\n" + self.head)
        self.next_at = self.conn.loop.time()
        self._schedule()

    def _schedule(self) -> None:
        loop = self.conn.loop
        if self.delay:
            self.next_at += self.delay
            self.handle = loop.call_at(self.next_at, self._tick)
        else:
            self.handle = loop.call_soon(self._tick)

    def _tick(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        if conn.paused:
            conn.waiting = self
            return
        write = conn.transport.write
        for _ in range(1 if self.delay else BURST):
            if self.left == 0:
                self._finish()
                return
            write(self.tokens[self.sent % len(WORDS)])
            self.sent += 1
            self.left -= 1
        self._schedule()

    def _finish(self) -> None:
        self.done = True
        self.conn.stats.completed += 1
        self.conn.transport.write(self.tail)
        self.conn.stream = None
        if not self.keep:
            self.conn.transport.close()

    def abandon(self) -> None:
        if self.done:
            return
        self.done = True
        self.conn.stats.abandoned += 1
        if self.handle is not None:
            self.handle.cancel()
        if self.tag is not None:
            self.conn.stats.disconnects[self.tag] = time.perf_counter()


class Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests in, answers out."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.buffer = b""
        self.closed = False
        self.paused = False
        self.waiting: Stream | None = None
        self.stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.abandon()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting._tick()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.stream is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = lines[0].split(" ")[:2]
            keep = headers.get("connection", "").lower() != "close"
            self.handle(method, path, body, keep)

    def handle(self, method: str, path: str, body: bytes, keep: bool) -> None:
        if method == "GET" and path.startswith("/disconnects"):
            self.respond(200, json.dumps(self.stats.disconnects).encode(), keep)
        elif method == "GET" and path.startswith("/stats"):
            stats = {"started": self.stats.started, "completed": self.stats.completed}
            self.respond(200, json.dumps({**stats, "abandoned": self.stats.abandoned}).encode(), keep)
        elif method == "GET" and path.startswith("/v1/models"):
            model = {"id": "mock-d0", "object": "model", "created": 0, "owned_by": "bench"}
            self.respond(200, json.dumps({"object": "list", "data": [model]}).encode(), keep)
        elif method == "POST" and path.startswith("/v1/chat/completions"):
            self.complete(json.loads(body or b"{}"), keep)
        else:
            self.respond(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}', keep)

    def complete(self, request: dict[str, Any], keep: bool) -> None:
        model = str(request.get("model", "mock-d0"))
        tokens = int(request.get("max_completion_tokens") or request.get("max_tokens") or 16)
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(WORDS[i % len(WORDS)] for i in range(tokens))}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
            answer = {"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model}
            self.respond(200, json.dumps({**answer, "choices": [choice], "usage": usage}).encode(), keep)
            return
        text = json.dumps(request.get("messages", []))
        tag = _CANCEL_TAG.search(text)
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self.stats.started += 1
        self.stream = Stream(self, model, tokens, usage, tag.group(0) if tag else None, keep)
        self.stream.start()

    def respond(self, status: int, body: bytes, keep: bool) -> None:
        head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        if not keep:
            head += "connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)
        if not keep:
            self.transport.close()


async def serve(host: str, port: int, ready: str | None = None) -> None:
    """Serve until cancelled; print ``ready`` (if given) once listening."""
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(stats), host, port, backlog=4096)
    if ready:
        print(ready, flush=True)
    async with server:
        await server.serve_forever()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    run(serve(args.host, args.port, ready=f"mock upstream on {args.host}:{args.port}"))


if __name__ == "__main__":
    main()
