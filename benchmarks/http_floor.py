"""The HTTP floor: the least an HTTP-aware streaming relay in Python costs on this machine.

Where :mod:`floor_relay` copies TCP bytes without looking at them, this one does what any HTTP
gateway must do at the least, on the same stack ``sluiceway serve`` runs: uvicorn (uvloop +
httptools) parses the client's request, a bare ASGI function (no framework, no middleware, no
validation) sends it on to the upstream with one shared aiohttp session (the transport under
sluiceway's ``openai`` provider), and the upstream's body goes back chunk by chunk as it arrives,
unchanged (no SSE parsing, no JSON, no re-encoding, no log, no resume); a second task waits for the
client's disconnect and cancels the relay, so the upstream connection closes when the client leaves.

What sluiceway costs above this is its own work (the SDK, parsing and re-encoding, the lifecycle);
what this costs above :mod:`floor_relay` is HTTP itself in Python.

With ``--sdk`` the request goes on through the official ``openai`` SDK instead, as sluiceway's
``openai`` provider sends it (``AsyncOpenAI`` over its aiohttp transport, the body as JSON bytes,
the raw response), and the body is read from the aiohttp response under it, as the provider reads
it: the least a relay that sends through the SDK costs (the ``sdk-floor`` target).

Used by :mod:`relay` as the ``http-floor`` and ``sdk-floor`` targets. Loopback only.

Run: ``python benchmarks/http_floor.py --upstream http://127.0.0.1:9100 --port 9200 [--sdk]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx2
import openai
import uvicorn

from sluiceway.providers.openai import aiohttp_response, post_chat_stream

LOOPBACK = ("127.0.0.1", "localhost", "::1")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Relay:
    """The ASGI app: every HTTP request is sent on to ``upstream`` and its answer streamed back."""

    def __init__(self, upstream: str, sdk: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.sdk: openai.AsyncOpenAI | None = None
        if sdk:
            pool = httpx2.Limits(max_connections=0, keepalive_expiry=5.0)
            self.sdk = openai.AsyncOpenAI(
                base_url=self.upstream + "/v1",
                api_key="sk-no-key-required",
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(limits=pool),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        relay = asyncio.current_task()
        assert relay is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            relay.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            if self.sdk is not None and scope["path"] == "/v1/chat/completions":
                await self.relay_sdk(self.sdk, body, send)
            else:
                await self.relay(scope, body, send)
        except asyncio.CancelledError:
            if not watcher.done():
                raise
        finally:
            watcher.cancel()

    async def relay(self, scope: Scope, body: bytes, send: Send) -> None:
        assert self.session is not None
        url = self.upstream + scope["path"]
        headers = {"content-type": "application/json"} if body else {}
        async with self.session.request(scope["method"], url, data=body or None, headers=headers) as answer:
            kind = answer.headers.get("content-type", "application/octet-stream").encode()
            await send(
                {"type": "http.response.start", "status": answer.status, "headers": [(b"content-type", kind)]}
            )
            while chunk := await answer.content.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def relay_sdk(self, sdk: openai.AsyncOpenAI, body: bytes, send: Send) -> None:
        raw = aiohttp_response(await post_chat_stream(sdk, body))
        assert raw is not None, "the SDK's aiohttp transport, an uncompressed body"
        try:
            kind = raw.headers.get("content-type", "application/octet-stream").encode()
            await send(
                {"type": "http.response.start", "status": raw.status, "headers": [(b"content-type", kind)]}
            )
            while chunk := await raw.content.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            raw.release()
        await send({"type": "http.response.body", "body": b""})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=5.0)
                self.session = aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=None)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    with contextlib.suppress(Exception):
                        await self.session.close()
                if self.sdk is not None:
                    with contextlib.suppress(Exception):
                        await self.sdk.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the mock upstream's base URL")
    parser.add_argument("--sdk", action="store_true", help="send chat completions through the openai SDK")
    args = parser.parse_args()
    target = urlsplit(args.upstream)
    if args.host not in LOOPBACK or target.hostname not in LOOPBACK or target.port is None:
        parser.error("loopback only (the upstream: a loopback URL with a port)")
    uvicorn.run(
        Relay(args.upstream, sdk=args.sdk),
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
