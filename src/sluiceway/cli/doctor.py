"""``sluiceway doctor URL``: does streaming survive the way to the user (proxies, CDNs, balancers)?

How it works: the doctor asks for an ``echo`` of ``--words`` words and records when each chunk
and each ``: ping`` comment arrives. The server's final ``done`` event says how long the server took
to produce the chunks (``(tokens - 1) / tokens_per_s``); if they reach us in a small fraction of that
time, or in a few bursts, something between us buffers. No special request field is needed: the
pace comes from the model, so point ``--model`` at a slow one (``serve --echo-delay-ms 50``, or a
``[models.NAME] provider = "echo"`` with ``delay_ms``); with a fast model the check says it cannot
tell. Heartbeats are judged on the same stream: the server pings after ``heartbeat_s`` of silence
(which ``/healthz`` publishes), so a ping means they get through, and a silence well past
``heartbeat_s`` (or, from a server that does not say, longer than ``--heartbeat-wait``) without one
means they do not. Resume is checked by reading the finished stream again after its middle event.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from sluiceway.cli.chat import add_api_key, positive_int
from sluiceway.cli.urls import url_problem
from sluiceway.client._core import parse_event_id
from sluiceway.client._types import client_headers
from sluiceway.errors import SluicewayError
from sluiceway.wire.sse import SSEDecoder

if TYPE_CHECKING:  # imported where used: ``sluiceway serve`` loads this module but needs no HTTP client
    import httpx

    from sluiceway.client import Client

Status: TypeAlias = Literal["ok", "fail", "warn", "skip"]
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett")
MIN_SPAN_S = 0.2
BUFFERING_FIX = (
    "turn response buffering off for this route. nginx: `proxy_buffering off;` in the location "
    "(sluiceway sends `X-Accel-Buffering: no`, so also remove any `proxy_ignore_headers "
    "X-Accel-Buffering;`), and `gzip off;` for text/event-stream. CDNs and load balancers: disable "
    "buffering/caching and compression for /chat/stream and /v1/*."
)


@dataclass(slots=True)
class Check:
    """One verdict: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(slots=True)
class Observation:
    """One stream as it arrived: times in seconds since the request was sent."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[float, int, str]] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    lone_pings: list[tuple[float, float]] = field(default_factory=list)
    """Reads that held only pings, no data: ``(time, silence before it)``; nothing held them back."""
    done: dict[str, Any] | None = None
    stream_id: str | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        """The chunks' text joined."""
        return "".join(text for _, _, text in self.chunks)

    def server_span(self) -> float | None:
        """Seconds the server took from first to last chunk, from its own ``tokens_per_s``."""
        done = self.done or {}
        tps = done.get("tokens_per_s")
        tokens = (done.get("usage") or {}).get("output_tokens", len(self.chunks))
        if not isinstance(tps, int | float) or tps <= 0 or tokens < 2:
            return None
        return float((tokens - 1) / tps)

    def longest_silence(self) -> float:
        """The longest wait between reads (from the request to the last byte)."""
        return max((b - a for a, b in itertools.pairwise([0.0, *self.reads])), default=0.0)


def observe(http: httpx.Client, model: str, words: int, timeout: float) -> Observation:
    """Stream ``words`` words of echo and note when everything arrived."""
    message = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    seen = Observation()
    decoder = SSEDecoder()
    carry = b""
    started = time.perf_counter()
    body = {"message": message, "model": model}
    with http.stream("POST", "/chat/stream", json=body, timeout=timeout) as response:
        seen.status, seen.headers = response.status_code, dict(response.headers)
        if response.status_code != 200:
            seen.error = f"HTTP {response.status_code}: {response.read()[:200].decode('utf-8', 'replace')}"
            return seen
        seen.stream_id = response.headers.get("x-stream-id")
        for chunk in response.iter_bytes():
            now = time.perf_counter() - started
            pings = (carry + chunk).count(b": ping\n")
            seen.pings.extend([now] * pings)
            if pings and b"data:" not in chunk:
                seen.lone_pings.append((now, now - (seen.reads[-1] if seen.reads else 0.0)))
            seen.reads.append(now)
            carry = chunk[-6:]
            for event in decoder.feed(chunk):
                _note(seen, now, event.id, event.data)
    return seen


def _note(seen: Observation, now: float, event_id: str | None, data: str) -> None:
    if data == "[DONE]":
        return
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        seen.error = seen.error or f"this is not sluiceway's stream: an event holds {data[:60]!r}"
        return
    stream_id, seq = parse_event_id(event_id)
    seen.stream_id = seen.stream_id or stream_id
    if payload.get("type") == "chunk":
        seen.chunks.append((now, seq or 0, payload.get("text", "")))
    elif payload.get("type") == "done":
        seen.done = payload
    elif payload.get("type") == "error":
        seen.error = f"{payload.get('code')}: {payload.get('message')}"


def check_incremental(seen: Observation) -> Check:
    """Did the chunks arrive at the server's pace, or all at once?"""
    name = "incremental"
    n = len(seen.chunks)
    span = seen.server_span()
    if n < 3 or span is None:
        return Check(name, "skip", f"only {n} chunks and no server timing: cannot tell")
    if span < MIN_SPAN_S:
        return Check(
            name,
            "warn",
            f"the model produced {n} chunks in {span * 1000:.0f} ms: too fast to tell buffering apart",
            "use a slow model: restart with `sluiceway serve --echo-delay-ms 50` (or add a "
            '[models.slow] provider = "echo" with delay_ms = 50) and pass --model',
        )
    arrival = seen.chunks[-1][0] - seen.chunks[0][0]
    bursts = len({t for t, _, _ in seen.chunks})
    facts = (
        f"{n} chunks arrived over {arrival * 1000:.0f} ms in {bursts} reads; "
        f"the server produced them over {span * 1000:.0f} ms"
    )
    if arrival >= 0.5 * span and bursts >= max(3, n / 3):
        return Check(name, "ok", facts + ": the stream arrives as it is generated")
    encoding = seen.headers.get("content-encoding")
    zipped = f" (it was compressed on the way: Content-Encoding: {encoding})" if encoding else ""
    return Check(name, "fail", facts + ": something on the way buffers the stream" + zipped, BUFFERING_FIX)


def check_heartbeats(seen: Observation, wait: float, heartbeat_s: float | None = None) -> Check:
    """Do ``: ping`` comments reach us while the stream is quiet?

    When ``/healthz`` tells the server's ``heartbeat_s``, that is the measure: a silence longer than
    about one and a half of it means a ping was due and did not come (held back), whatever
    ``wait``; ``0`` means the server sends none. Otherwise a silence longer than ``wait`` is the
    proxy's fault only if pings were due in it: pings that arrive on their own (a read with no data)
    got through, so a long silence then means the server pings less often than ``wait`` (the silence
    before those pings), not that something holds them back, as long as no ping was overdue."""
    name = "heartbeats"
    silence = seen.longest_silence()
    if heartbeat_s == 0:
        return Check(
            name,
            "skip",
            "the server sends no heartbeats (its /healthz says heartbeat_s = 0)",
            "set heartbeat_s (e.g. 15) so that proxies do not time out quiet streams",
        )
    told = heartbeat_s is not None
    interval = heartbeat_s or (min(gap for _, gap in seen.lone_pings) if seen.lone_pings else None)
    overdue = interval is not None and silence > interval * 1.5 + 0.2
    if silence >= wait or (told and overdue):
        if interval is not None and not overdue:
            pace = (
                f"the server pings after heartbeat_s = {interval:g} s of silence (its /healthz)"
                if told
                else f"the server pings only after about {interval:.2f} s of silence"
            )
            return Check(
                name,
                "warn",
                f"silent for {silence:.2f} s (more than --heartbeat-wait {wait:g} s), but {pace}"
                + (f" and {len(seen.lone_pings)} pings arrived on their own" if seen.lone_pings else ""),
                f"pass a --heartbeat-wait above the server's heartbeat_s (e.g. {interval * 1.5 + 0.1:.1f})",
            )
        held = f" ({len(seen.pings)} pings came late, held back with the data)" if seen.pings else ""
        limit = (
            f" without a ping, though the server pings after heartbeat_s = {interval:g} s of silence"
            if told
            else f" (more than --heartbeat-wait {wait:g} s) without a ping"
        )
        return Check(
            name,
            "fail",
            f"silent for {silence:.2f} s{limit}{held}",
            "pings are held back with the data: " + BUFFERING_FIX + " Keep the proxy's read timeout "
            "(nginx proxy_read_timeout, default 60 s) above the server's heartbeat_s.",
        )
    if seen.pings:
        return Check(name, "ok", f"{len(seen.pings)} pings arrived; longest silence {silence:.2f} s")
    after = f"its heartbeat_s ({heartbeat_s:g} s)" if told else "heartbeat_s"
    return Check(
        name,
        "skip",
        f"no ping, but the stream was never quiet for long (longest silence {silence:.2f} s); the server "
        f"pings only after {after} of silence",
        "to test, use a model whose per-token delay exceeds the server's heartbeat_s",
    )


def check_resume(client: Client, seen: Observation) -> Check:
    """Can the stream be read again after its middle event, with exactly the rest of the text?"""
    name = "resume"
    if seen.stream_id is None:
        return Check(
            name,
            "fail",
            "the response carried no X-Stream-Id header and no event ids",
            "let the X-Stream-Id header through the proxy (no proxy_hide_header X-Stream-Id)",
        )
    if len(seen.chunks) < 2:
        return Check(name, "skip", "too few chunks to resume from the middle")
    middle = len(seen.chunks) // 2
    after = seen.chunks[middle - 1][1]
    expected = "".join(text for _, _, text in seen.chunks[middle:])
    try:
        with client.resume(seen.stream_id, after) as stream:
            text = stream.final_result().text
    except SluicewayError as exc:
        return Check(
            name,
            "fail",
            f"GET /chat/stream/{seen.stream_id}?after={after} failed: {exc}",
            "route GET /chat/stream/* to sluiceway as well (and upgrade a server without resume)",
        )
    if text != expected:
        return Check(name, "fail", f"resumed text {text[:40]!r} differs from the expected {expected[:40]!r}")
    return Check(name, "ok", f"resumed after event {after}: the remaining {len(expected)} characters match")


def diagnose(
    url: str, model: str, words: int, heartbeat_wait: float, timeout: float, api_key: str | None = None
) -> list[Check]:
    """Run every check against ``url``; stop early when the server cannot be reached."""
    import httpx

    from sluiceway.client import Client

    headers = client_headers(None, api_key)
    with (
        httpx.Client(base_url=url, timeout=timeout, headers=headers) as http,
        Client(url, http=http) as client,
    ):
        try:
            health = client.health()
        except SluicewayError as exc:
            return [Check("reachable", "fail", f"GET {url}/healthz failed: {exc}", "is the server running?")]
        checks = [Check("reachable", "ok", f"server up; models: {', '.join(health.get('models', []))}")]
        heartbeat_s = health.get("heartbeat_s")  # an older server does not tell: inferred then
        if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int | float) or heartbeat_s < 0:
            heartbeat_s = None
        try:
            seen = observe(http, model, words, timeout)
        except httpx.HTTPError as exc:
            return [*checks, Check("stream", "fail", f"POST {url}/chat/stream failed: {exc!r}")]
        if seen.error is not None or seen.status != 200:
            return [*checks, Check("stream", "fail", f"the stream failed: {seen.error}")]
        if seen.text != " ".join(WORDS[i % len(WORDS)] for i in range(words)):
            checks.append(Check("stream", "warn", f"model {model} did not echo the message; is it echo?"))
        return [
            *checks,
            check_incremental(seen),
            check_heartbeats(seen, heartbeat_wait, heartbeat_s),
            check_resume(client, seen),
        ]


def format_checks(url: str, model: str, checks: list[Check]) -> str:
    """One line per check, with its fix underneath."""
    lines = [f"sluiceway doctor · {url} · model {model}"]
    for check in checks:
        lines.append(f"  {check.status.upper():5} {check.name:12} {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"  {'':5} {'':12} fix: {check.fix}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """Register ``doctor`` and its flags."""
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="check that a deployment streams: buffering, heartbeats, resume",
        description="Check a deployment the way users get bitten: does a slow echo stream\n"
        "arrive incrementally, or does something (nginx, a CDN, a load balancer) buffer it;\n"
        "do heartbeats arrive; does resume work. Prints a verdict per check, with the fix.",
        epilog="The buffering check needs a model that streams slowly, e.g. a server started with\n"
        "`sluiceway serve --echo-delay-ms 50`. Example:\n"
        "  sluiceway doctor https://chat.example.com --model echo\n\n"
        "exit codes: 0 no check failed, 1 a check failed, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="the deployment's base URL (as users reach it)")
    add_api_key(p)
    p.add_argument("--model", default="echo", help="an echo model that streams slowly (default echo)")
    p.add_argument("--words", type=positive_int, default=20, metavar="N", help="words to echo (default 20)")
    p.add_argument(
        "--heartbeat-wait",
        type=float,
        default=20.0,
        metavar="S",
        help="the longest silence without a ping that is acceptable (default 20, above the server's 15)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for the stream (default 60)"
    )
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the checks and print the verdicts."""
    problem = url_problem(args.url)
    if problem is not None:
        print(f"sluiceway doctor: {problem}", file=sys.stderr)
        return 2
    if args.heartbeat_wait <= 0 or args.timeout <= 0:
        print("sluiceway doctor: --heartbeat-wait and --timeout must be positive", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    checks = diagnose(url, args.model, args.words, args.heartbeat_wait, args.timeout, args.api_key)
    if args.json:
        print(json.dumps({"url": url, "model": args.model, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(format_checks(url, args.model, checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
