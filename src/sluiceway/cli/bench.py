"""``sluiceway bench URL``: a bounded load generator for sluiceway's streaming protocols.

How it works: ``--concurrency`` workers take request numbers from one shared iterator until
``--requests`` are taken, each keeping one keep-alive connection (httpx pools of 10 connections, see
:func:`http_clients`); ``--max-seconds`` cancels whatever is still running. The request body is
encoded once. Per read from the socket the only work is one ``rfind`` for the last event boundary
and one regular expression count of text events (:class:`Scanner`); JSON is never parsed per token.
Tokens are the server's own count from the final usage when it sends one, else the text events.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import re
import resource
import ssl
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from sluiceway.cli.chat import add_api_key, positive_int
from sluiceway.cli.urls import url_problem
from sluiceway.client._types import client_headers

if TYPE_CHECKING:  # imported where used: ``sluiceway serve`` loads this module but needs no HTTP client
    import httpx

Protocol: TypeAlias = Literal["seed", "openai"]
DEFAULT_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)
_JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Wire:
    """What one protocol's stream looks like to the scanner."""

    path: str
    text: re.Pattern[bytes]
    error: re.Pattern[bytes]
    usage: re.Pattern[bytes]
    code: re.Pattern[bytes]


WIRES: dict[Protocol, Wire] = {
    "seed": Wire(
        "/chat/stream",
        re.compile(rb'"type":\s*"chunk"'),
        re.compile(rb'"type":\s*"error"'),
        re.compile(rb'"output_tokens":\s*(\d+)'),
        re.compile(rb'"code":\s*"([^"]*)"'),
    ),
    "openai": Wire(
        "/v1/chat/completions",
        re.compile(rb'"content":\s*"(?!")'),
        re.compile(rb'"error":\s*\{'),
        re.compile(rb'"completion_tokens":\s*(\d+)'),
        re.compile(rb'"(?:code|type)":\s*"([^"]*)"'),
    ),
}


class Scanner:
    """Counts one response's text events in raw SSE bytes, and notes its end, usage and error."""

    __slots__ = ("_rest", "done", "error", "events", "usage", "wire")

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._rest = b""
        self.events = 0
        self.done = False
        self.usage: int | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> int:
        """Take one read; return how many text events it completed."""
        data = self._rest + chunk if self._rest else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return 0
        block, self._rest = data[: end + 2], data[end + 2 :]
        found = len(self.wire.text.findall(block))
        self.events += found
        if b"[DONE]" in block:
            self.done = True
        if b'_tokens":' in block:
            usage = self.wire.usage.findall(block)
            if usage:
                self.usage = int(usage[-1])
        if self.error is None and b"error" in block:
            self._note_error(block)
        return found

    def _note_error(self, block: bytes) -> None:
        error = self.wire.error.search(block)
        if error is not None:
            code = self.wire.code.search(block, error.start())
            self.error = "in-band " + (code.group(1).decode() if code else "error")

    @property
    def tokens(self) -> int:
        """The server's token count if it sent one, else the text events seen."""
        return self.usage if self.usage is not None else self.events


@dataclass(frozen=True, slots=True)
class Sample:
    """One request's outcome: seconds to the first text and to the end, tokens, error kind."""

    latency_s: float
    ttft_s: float | None
    tokens: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One run's parameters (the CLI flags)."""

    url: str
    protocol: Protocol = "seed"
    model: str = "echo"
    prompt: str = DEFAULT_PROMPT
    max_tokens: int | None = None
    concurrency: int = 10
    requests: int = 100
    max_seconds: float = 60.0
    timeout_s: float = 60.0
    api_key: str | None = field(default=None, repr=False)

    def body(self) -> bytes:
        """The request body, encoded once for every request."""
        message = {"role": "user", "content": self.prompt}
        body: dict[str, Any] = {"model": self.model, "messages": [message]}
        if self.protocol == "openai":
            body.update(stream=True, stream_options={"include_usage": True})
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return json.dumps(body).encode()


@dataclass(slots=True)
class Report:
    """What a run measured; ``tokens`` and ``*_ms`` (p50/p90/p99/max) are over the successful requests."""

    url: str
    protocol: str
    model: str
    concurrency: int
    requests: int
    ok: int
    failed: int
    unfinished: int
    duration_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    ttft_ms: dict[str, float | None] = field(default_factory=dict)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


async def one_request(http: httpx.AsyncClient, wire: Wire, body: bytes) -> Sample:
    """Send one streaming request and scan its answer."""
    import httpx

    started = time.perf_counter()
    scanner = Scanner(wire)
    ttft: float | None = None
    try:
        async with http.stream("POST", wire.path, content=body) as response:
            if response.status_code != 200:
                detail = wire.code.search(await response.aread())
                kind = f"http {response.status_code}" + (f" {detail.group(1).decode()}" if detail else "")
                return Sample(time.perf_counter() - started, None, 0, kind)
            async for chunk in response.aiter_bytes():
                if scanner.feed(chunk) and ttft is None:
                    ttft = time.perf_counter() - started
    except httpx.HTTPError as exc:
        return Sample(time.perf_counter() - started, ttft, scanner.tokens, type(exc).__name__)
    error = scanner.error or (None if scanner.done else "incomplete stream")
    return Sample(time.perf_counter() - started, ttft, scanner.tokens, error)


async def run_bench(config: BenchConfig) -> Report:
    """Run ``config`` to completion or to its time limit and summarise it."""
    wire = WIRES[config.protocol]
    body = config.body()
    size = min(config.concurrency, config.requests)
    samples: list[Sample] = []
    tickets = iter(range(config.requests))
    started = [0]

    async def worker(http: httpx.AsyncClient) -> None:
        for _ in tickets:
            started[0] += 1
            samples.append(await one_request(http, wire, body))

    async with AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(client) for client in http_clients(config, size)]
        begin = time.perf_counter()
        try:
            async with asyncio.timeout(config.max_seconds), asyncio.TaskGroup() as group:
                for n in range(size):
                    group.create_task(worker(pools[n // POOL_SIZE]))
        except TimeoutError:
            pass
        duration = time.perf_counter() - begin
    return summarise(config, samples, started[0] - len(samples), duration)


POOL_SIZE = 10


def http_clients(config: BenchConfig, connections: int) -> list[httpx.AsyncClient]:
    """Clients holding ``connections`` keep-alive connections in all, ``POOL_SIZE`` each.

    httpcore scans its whole pool several times for every request it places, so the client's CPU per
    request grows with the pool: measured at 400 streams x 1,200 echo requests, one pool of 400 took
    ~7.6 s of CPU, pools of 50 5.5 s, pools of 10 (or 1) 4.1 s. The clients share one TLS context
    (building one per client is slow)."""
    import httpx

    tls = ssl.create_default_context()
    timeout = httpx.Timeout(config.timeout_s, pool=None)
    clients = []
    for first in range(0, connections, POOL_SIZE):
        n = min(POOL_SIZE, connections - first)
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        clients.append(
            httpx.AsyncClient(
                base_url=config.url,
                limits=limits,
                timeout=timeout,
                verify=tls,
                headers=client_headers(_JSON, config.api_key),
            )
        )
    return clients


def summarise(config: BenchConfig, samples: list[Sample], unfinished: int, duration: float) -> Report:
    """Percentiles and rates over ``samples``."""
    good = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in good)  # a failed stream's chunks are not throughput
    return Report(
        url=config.url,
        protocol=config.protocol,
        model=config.model,
        concurrency=config.concurrency,
        requests=config.requests,
        ok=len(good),
        failed=len(samples) - len(good),
        unfinished=unfinished,
        duration_s=round(duration, 3),
        requests_per_s=round(len(good) / duration, 2) if duration > 0 else 0.0,
        tokens=tokens,
        tokens_per_s=round(tokens / duration, 1) if duration > 0 else 0.0,
        ttft_ms=percentiles([s.ttft_s for s in good if s.ttft_s is not None]),
        latency_ms=percentiles([s.latency_s for s in good]),
        errors=dict(Counter(s.error for s in samples if s.error is not None).most_common()),
    )


PERCENTILES = (50, 90, 99)


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p90/p99 and the max, in milliseconds (``None`` without samples)."""
    ordered = sorted(seconds)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
        out[f"p{p}"] = round(ordered[rank] * 1000, 2) if ordered else None
    out["max"] = round(ordered[-1] * 1000, 2) if ordered else None
    return out


def format_report(report: Report) -> str:
    """The human-readable table."""
    lines = [
        f"sluiceway bench · {report.url} · {report.protocol} · model {report.model} · "
        f"concurrency {report.concurrency}",
        f"requests    {report.ok} ok · {report.failed} failed · {report.unfinished} unfinished "
        f"of {report.requests} in {report.duration_s:.2f} s",
        f"throughput  {report.requests_per_s:.1f} requests/s · {report.tokens_per_s:.0f} tokens/s "
        f"({report.tokens} tokens)",
        f"{'':14}" + "".join(f"{name:>10}" for name in (*(f"p{p}" for p in PERCENTILES), "max")),
    ]
    for label, values in (("TTFT ms", report.ttft_ms), ("latency ms", report.latency_ms)):
        cells = "".join(f"{'–' if v is None else f'{v:.1f}':>10}" for v in values.values())
        lines.append(f"{label:14}{cells}")
    errors = ", ".join(f"{kind}: {count}" for kind, count in report.errors.items()) or "none"
    lines.append(f"errors      {errors}")
    return "\n".join(lines)


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost``, 127.0.0.0/8 or ::1)."""
    import httpx

    host = httpx.URL(url).host
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_fd_limit(needed: int) -> None:
    """Lift the soft open-files limit towards ``needed`` (each stream holds a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def add_parser(sub: Any) -> None:
    """Register ``bench`` and its flags."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test a server: requests/s, tokens/s, TTFT and latency percentiles",
        description="Send --requests streaming chat requests, --concurrency at a time, for at\n"
        "most --max-seconds, and report requests/s, tokens/s, time to first token and total\n"
        "latency (p50/p90/p99/max) and errors, as a table or --json. Only loopback URLs\n"
        "unless --allow-remote.",
        epilog="example:\n"
        "  sluiceway bench http://127.0.0.1:8000 --concurrency 100 --requests 2000 --json\n\n"
        "exit codes: 0 the run completed, 1 no request succeeded, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--concurrency", "-c", type=positive_int, default=10, metavar="N", help="streams at once (default 10)"
    )
    p.add_argument(
        "--requests",
        "-n",
        type=positive_int,
        default=100,
        metavar="N",
        help="requests in total (default 100)",
    )
    p.add_argument("--max-seconds", type=float, default=60.0, metavar="S", help="stop after S s (default 60)")
    p.add_argument(
        "--protocol", choices=["seed", "openai"], default="seed", help="API to load (default seed)"
    )
    add_api_key(p)
    p.add_argument("--model", default="echo", help="model to ask (default echo)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message (echo streams it back)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="limit each answer to N tokens")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="per-request connect/read timeout (default 60)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--allow-remote", action="store_true", help="allow a URL that is not loopback")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the flags, run the load, print the report."""
    problem = url_problem(args.url)
    if problem is not None:
        return _usage(problem)
    if not is_loopback(args.url) and not args.allow_remote:
        return _usage(f"{args.url} is not a loopback address; pass --allow-remote to load it anyway")
    if args.max_seconds <= 0 or args.timeout <= 0:
        return _usage("--max-seconds and --timeout must be positive")
    config = BenchConfig(
        url=args.url.rstrip("/"),
        protocol=args.protocol,
        model=args.model,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        requests=args.requests,
        max_seconds=args.max_seconds,
        timeout_s=args.timeout,
        api_key=args.api_key,
    )
    raise_fd_limit(2 * args.concurrency + 256)
    report = asyncio.run(run_bench(config))
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def _usage(message: str) -> int:
    print(f"sluiceway bench: {message}", file=sys.stderr)
    return 2
