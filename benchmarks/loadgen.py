"""The relay benchmark's load generator: raw asyncio streams, per-token arrival times, bounded load.

Why not ``sluiceway bench``: it is built on httpx (a few tens of microseconds per read) and reports
TTFT and total latency per request, not inter-token delays; at 200,000+ tokens/s the client must
cost far less than the server it measures. Here each request is an ``asyncio.Protocol`` on a fresh
connection (``Connection: close``, so the end of the answer is the end of the connection): a read
costs one ``rfind`` for the last complete SSE event and one regular-expression count of the text
deltas in it; JSON is never parsed. All tokens of one read share its arrival time (the gaps between
them count as 0 ms: they left the server together).

Modes (one run each, JSON on stdout):

* ``--duration S``: every worker repeats requests until S seconds have passed, then waits for the
  ones in flight (max relay rate);
* ``--per-worker N``: every worker sends exactly N requests (realistic cadence: all streams open at
  once);
* ``--cancel K --mock URL``: K requests one after another, each closed after its third token; the
  mock upstream reports when the relay's upstream connection closed (cancel latency).

Every run stops by ``--max-seconds``. Loopback URLs only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import secrets
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
from mock_upstream import run

TOKEN = re.compile(rb'"content":\s*"(?!")')
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Totals:
    """Everything one run measured."""

    ok: int = 0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cancel_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0


class Probe(asyncio.Protocol):
    """One streamed request on its own connection."""

    def __init__(self, request: bytes, totals: Totals, stop_after: int = 0) -> None:
        self.request = request
        self.totals = totals
        self.stop_after = stop_after
        self.done = asyncio.get_running_loop().create_future()
        self.rest = b""
        self.status_ok: bool | None = None
        self.status = ""
        self.finished = False
        self.tokens = 0
        self.first: float | None = None
        self.last = 0.0
        self.closed_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.status_ok is None:
            self.status = data[9:12].decode("latin-1")
            self.status_ok = self.status == "200"
        buf = self.rest + data if self.rest else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.rest = buf
            return
        block, self.rest = buf[: end + 2], buf[end + 2 :]
        if b"[DONE]" in block:
            self.finished = True
        n = len(TOKEN.findall(block))
        if not n:
            return
        gaps = self.totals.gaps
        if self.first is None:
            self.first = now
        else:
            gaps.append(now - self.last)
        if n > 1:
            gaps.extend([0.0] * (n - 1))
        self.last = now
        self.tokens += n
        if self.stop_after and self.tokens >= self.stop_after and self.closed_at is None:
            self.closed_at = time.perf_counter()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(frozen=True)
class Target:
    """Where to send and what."""

    host: str
    port: int
    path: str
    model: str
    tokens: int
    api_key: str = "sk-bench"

    def request(self, prompt: str = "bench") -> bytes:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                "max_tokens": self.tokens,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.api_key}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


async def one(target: Target, request: bytes, totals: Totals, stop_after: int = 0) -> Probe | None:
    """Send one request and wait for its end; record it in ``totals``."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    probe = Probe(request, totals, stop_after)
    try:
        await loop.create_connection(lambda: probe, target.host, target.port)
        await probe.done
    except OSError as exc:
        totals.errors[type(exc).__name__] += 1
        return None
    except asyncio.CancelledError:
        if hasattr(probe, "transport"):
            probe.transport.abort()
        totals.errors["unfinished"] += 1
        raise
    if probe.first is not None:
        totals.ttfts.append(probe.first - started)
    totals.tokens += probe.tokens
    if stop_after:
        return probe
    if not probe.status_ok:
        totals.errors[f"http {probe.status}"] += 1
    elif not probe.finished:
        totals.errors["incomplete"] += 1
    else:
        totals.ok += 1
    return probe


async def load(target: Target, concurrency: int, duration: float, per_worker: int, limit: float) -> Totals:
    """``concurrency`` workers, each for ``duration`` seconds or ``per_worker`` requests."""
    totals = Totals()
    request = target.request()
    begin = time.perf_counter()

    async def worker() -> None:
        sent = 0
        while (per_worker and sent < per_worker) or (duration and time.perf_counter() - begin < duration):
            await one(target, request, totals)
            sent += 1

    try:
        async with asyncio.timeout(limit), asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except TimeoutError:
        totals.errors["time limit"] += 1
    totals.elapsed = time.perf_counter() - begin
    return totals


async def cancels(target: Target, count: int, mock: str, limit: float) -> Totals:
    """``count`` streams, each closed after 3 tokens; the upstream's view of each close."""
    totals = Totals()
    begin = time.perf_counter()
    for _ in range(count):
        if time.perf_counter() - begin > limit:
            totals.errors["time limit"] += 1
            break
        tag = f"cancel-{secrets.token_hex(6)}"
        probe = await one(target, target.request(f"please stop {tag}"), totals, stop_after=3)
        if probe is None or probe.closed_at is None:
            totals.errors["closed before 3 tokens"] += 1
            continue
        seen = await asyncio.to_thread(_wait_disconnect, mock, tag, 2.0)
        if seen is None:
            totals.errors["upstream still open after 2 s"] += 1
        else:
            totals.cancel_ms.append((seen - probe.closed_at) * 1000)
    totals.elapsed = time.perf_counter() - begin
    return totals


def _wait_disconnect(mock: str, tag: str, within: float) -> float | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{mock}/disconnects", timeout=5) as r:
            seen = json.loads(r.read())
        if tag in seen:
            return float(seen[tag])
        time.sleep(0.005)
    return None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 3)


def report(totals: Totals) -> dict[str, Any]:
    elapsed = totals.elapsed or 1e-9
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cancel = sorted(totals.cancel_ms)
    return {
        "ok": totals.ok,
        "errors": dict(totals.errors),
        "tokens": totals.tokens,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(totals.tokens / elapsed, 1),
        "requests_per_s": round(totals.ok / elapsed, 2),
        "ttft_p50_ms": percentile(totals.ttfts, 50),
        "ttft_p99_ms": percentile(totals.ttfts, 99),
        "itl_p99_ms": percentile(totals.gaps, 99),
        "cancel_p50_ms": round(cancel[len(cancel) // 2], 3) if cancel else None,
        "cancel_max_ms": round(cancel[-1], 3) if cancel else None,
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--per-worker", type=int, default=0)
    parser.add_argument("--cancel", type=int, default=0)
    parser.add_argument("--mock", help="the mock upstream's base URL (for --cancel)")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--api-key", default="sk-bench", help="sent as a Bearer token")
    args = parser.parse_args()
    url = urlsplit(args.url)
    if url.hostname not in LOOPBACK or url.port is None:
        parser.error("--url must be a loopback URL with a port")
    target = Target(url.hostname, url.port, args.path, args.model, args.tokens, args.api_key)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.concurrency + 1024)), hard))
    if args.cancel:
        totals = run(cancels(target, args.cancel, args.mock, args.max_seconds))
    else:
        job = load(target, args.concurrency, args.duration, args.per_worker, args.max_seconds)
        totals = run(job)
    print(json.dumps(report(totals)))


if __name__ == "__main__":
    main()
