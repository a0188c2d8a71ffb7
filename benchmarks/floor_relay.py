"""The floor: the cheapest relay Python can be on this machine, to show what relaying itself costs.

A byte-for-byte TCP relay on uvloop: every accepted connection gets its own connection to the
upstream; what either side sends is written to the other as it arrives (one read and one write per
chunk, no HTTP parsing, no JSON, no task per stream, no buffering or flow control). Any real gateway
does at least this much work per token (plus parsing, re-encoding and a lifecycle), so its ratio to
the direct upstream cannot beat this one's on the same machine: what the floor loses against
direct is the price of one extra process hop on 2 shared cores, not of any gateway's code.

Used by :mod:`relay` as the ``floor`` target. Loopback only.

Run: ``python benchmarks/floor_relay.py --upstream http://127.0.0.1:9100 --port 9200``
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast
from urllib.parse import urlsplit

from mock_upstream import run

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Downstream(asyncio.Protocol):
    """One client connection; its bytes go to the upstream, the upstream's come back."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        upstream.write(b"".join(self.pending))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.upstream is not None:
            self.upstream.close()  # the client left: the upstream sees it at once


class Upstream(asyncio.Protocol):
    """The upstream side of one relayed connection."""

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream

    def data_received(self, data: bytes) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.close()


async def serve(host: str, port: int, upstream: str) -> None:
    target = urlsplit(upstream)
    if target.hostname not in LOOPBACK or target.port is None:
        raise SystemExit("the upstream must be a loopback URL with a port")
    loop = asyncio.get_running_loop()
    up_host, up_port = target.hostname, target.port
    server = await loop.create_server(lambda: Downstream(up_host, up_port), host, port, backlog=4096)
    print(f"floor relay on {host}:{port} -> {up_host}:{up_port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the mock upstream's base URL")
    args = parser.parse_args()
    if args.host not in LOOPBACK:
        parser.error("loopback only")
    run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
