"""The stream lifecycle over real HTTP (uvicorn on loopback), on the memory and the Redis backend.

Providers under test are registered through the registry like any other: ``counting`` records when
each token was produced and when the generator stopped, which is how "the provider really stopped"
is measured (tokens produced after the client left).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from sluiceway.server.app import create_app
from sluiceway.wire.sse import ServerSentEvent, SSEDecoder
from tests.live import LiveServer, live_server, make_settings
from tests.streams.providers import Probe, Script, registry_with

WORDS = " ".join(f"w{i}" for i in range(60))
Serve = Callable[..., AbstractContextManager[LiveServer]]


@pytest.fixture
def probes() -> dict[str, Probe]:
    return {}


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def serve(backend: dict[str, Any], probes: dict[str, Probe], script: Script) -> Serve:
    """``with serve(**settings) as srv``: a live server with the test providers and models."""

    @contextmanager
    def run(**overrides: Any) -> Iterator[LiveServer]:
        models = {
            "count": ModelConfig("count", "counting", options={"delay_ms": 50}),
            "quick": ModelConfig("quick", "counting", options={"delay_ms": 5}),
            "slow": ModelConfig("slow", "echo", options={"delay_ms": 20}),
            **overrides.pop("models", {}),
        }
        settings = make_settings(models=models, **{**backend, **overrides})
        with live_server(app=create_app(settings, registry_with(probes, script))) as srv:
            yield srv

    return run


def parse(body: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(body) + decoder.flush()


def chunks(events: list[ServerSentEvent]) -> str:
    return "".join(e.data.split('"text":"', 1)[1][:-2] for e in events if '"type":"chunk"' in e.data)


def seqs(events: list[ServerSentEvent]) -> list[int]:
    return [int(e.id.rpartition(":")[2]) for e in events if e.id and e.data != "[DONE]"]


class Reader:
    """The events of one open streaming response, read as far as a test needs."""

    def __init__(self, response: httpx.Response) -> None:
        self._pieces = response.iter_raw()
        self._decoder = SSEDecoder()
        self.events: list[ServerSentEvent] = []

    def until(self, n_chunks: int) -> list[ServerSentEvent]:
        """Read until ``n_chunks`` chunk events in all have come."""
        for piece in self._pieces:
            self.events.extend(self._decoder.feed(piece))
            if sum('"type":"chunk"' in e.data for e in self.events) >= n_chunks:
                return self.events
        raise AssertionError(f"the stream ended after {len(self.events)} events")

    def rest(self) -> list[ServerSentEvent]:
        """Read to the end; the events not returned before."""
        seen = len(self.events)
        for piece in self._pieces:
            self.events.extend(self._decoder.feed(piece))
        self.events.extend(self._decoder.flush())
        return self.events[seen:]


def read_until(response: httpx.Response, n_chunks: int) -> list[ServerSentEvent]:
    """Read events from an open streaming response until ``n_chunks`` chunk events have come."""
    return Reader(response).until(n_chunks)


def start(srv: LiveServer, n_chunks: int, **body: Any) -> tuple[str, list[ServerSentEvent], float]:
    """POST a chat, read ``n_chunks`` chunks, drop the connection; (stream id, events, when dropped)."""
    with httpx.stream("POST", f"{srv.url}/chat/stream", json={"message": WORDS, **body}, timeout=10) as r:
        assert r.status_code == 200, r.read()
        got = read_until(r, n_chunks)
        dropped = time.monotonic()
    return r.headers["x-stream-id"], got, dropped


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# ---- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["query", "event-source", "post"])
def test_resume_after_a_dropped_connection_yields_the_exact_text(serve: Serve, how: str) -> None:
    with serve() as srv:
        stream_id, head, _ = start(srv, 7, model="slow")
        last = head[-1].id
        assert last is not None and last.startswith(f"{stream_id}:")
        if how == "query":
            r = httpx.get(
                f"{srv.url}/chat/stream/{stream_id}", params={"after": last.split(":")[1]}, timeout=10
            )
        elif how == "event-source":  # EventSource keeps the URL and adds the header, which wins
            r = httpx.get(
                f"{srv.url}/chat/stream/{stream_id}?after=0", headers={"Last-Event-ID": last}, timeout=10
            )
        else:
            body = {"message": WORDS, "model": "slow"}
            r = httpx.post(f"{srv.url}/chat/stream", json=body, headers={"Last-Event-ID": last}, timeout=10)
        tail = parse(r.content)
        assert (
            r.status_code == 200 and r.headers["x-stream-id"] == stream_id
        )  # the same stream, not a new one
        assert chunks(head) + chunks(tail) == WORDS
        numbers = seqs(head) + seqs(tail)
        assert numbers == sorted(set(numbers))  # ids rise, none repeats (Usage events carry none)
        assert r.text.endswith("data: [DONE]\n\n")


def test_a_finished_stream_stays_resumable_and_then_says_204(serve: Serve) -> None:
    with serve() as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "a b c", "model": "quick"}, timeout=10)
        stream_id, events = r.headers["x-stream-id"], parse(r.content)
        again = httpx.get(f"{srv.url}/chat/stream/{stream_id}", timeout=10)
        assert parse(again.content) == events
        end = httpx.get(f"{srv.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": events[-2].id or ""})
        assert end.status_code == 204 and end.content == b""


def test_resume_says_what_is_wrong(serve: Serve) -> None:
    with serve() as srv:
        missing = httpx.get(f"{srv.url}/chat/stream/0123456789abcdef")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "stream_not_found"
        assert httpx.post(f"{srv.url}/chat/stream/0123456789abcdef/cancel").status_code == 404
        stream_id, _, _ = start(srv, 1, model="quick")
        for bad in ("nonsense", f"{stream_id}:x", "other:3"):
            r = httpx.get(f"{srv.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x"}, headers={"Last-Event-ID": "gone:3"})
        assert r.status_code == 404


def test_two_readers_of_one_stream_both_get_every_event(serve: Serve) -> None:
    with serve() as srv:
        with httpx.stream(
            "POST", f"{srv.url}/chat/stream", json={"message": WORDS, "model": "slow"}
        ) as first:
            stream_id = first.headers["x-stream-id"]
            second = httpx.get(f"{srv.url}/chat/stream/{stream_id}", timeout=10)
            mine = parse(first.read())
        theirs = parse(second.content)
        assert chunks(theirs) == WORDS and chunks(mine) == WORDS
        assert seqs(theirs)[-1] == seqs(mine)[-1]


# ---- Stop, disconnect and the policies --------------------------------------------------------


def test_stop_cancels_at_once_and_reports_the_usage_so_far(serve: Serve, probes: dict[str, Probe]) -> None:
    with (
        serve() as srv,
        httpx.stream("POST", f"{srv.url}/chat/stream", json={"message": WORDS, "model": "count"}) as r,
    ):
        reader = Reader(r)
        reader.until(3)
        stopped = time.monotonic()
        answer = httpx.post(f"{srv.url}/chat/stream/{r.headers['x-stream-id']}/cancel", timeout=10)
        rest = reader.rest()
    probe = probes["count"]
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert answer.json()["usage"]["output_tokens"] == len(probe.produced) < 20
    assert probe.how in ("cancelled", "closed") and probe.after(stopped) <= 2
    assert '"finish_reason":"cancelled"' in rest[-2].data and rest[-1].data == "[DONE]"


def test_stop_after_the_end_reports_how_it_ended(serve: Serve) -> None:
    with serve() as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "a b", "model": "quick"}, timeout=10)
        answer = httpx.post(f"{srv.url}/chat/stream/{r.headers['x-stream-id']}/cancel").json()
        assert answer["status"] == "finished" and answer["finish_reason"] == "stop"
        assert answer["usage"]["output_tokens"] == 2


def test_a_disconnect_stops_the_provider_within_grace_plus_100_ms(
    serve: Serve, probes: dict[str, Probe]
) -> None:
    grace, per_token = 0.5, 0.05
    with serve(disconnect_grace_s=grace) as srv:
        _, _, dropped = start(srv, 3, model="count")
        probe = probes["count"]
        wait_for(lambda: probe.stopped_at is not None)
    assert probe.how in ("cancelled", "closed")
    after = probe.after(dropped)
    stopped_in = (probe.stopped_at or 0) - dropped
    print(f"tokens after disconnect: {after}; provider stopped {stopped_in * 1000:.0f} ms after it")
    assert after <= math.ceil((grace + 0.1) / per_token)
    assert grace - 0.05 < stopped_in < grace + 0.1 + 0.4  # + scheduling noise on a shared machine


def test_a_reader_back_within_the_grace_keeps_the_generation(serve: Serve, probes: dict[str, Probe]) -> None:
    with serve(disconnect_grace_s=2) as srv:
        stream_id, head, _ = start(srv, 3, model="count", message="a b c d e f g h i j")
        r = httpx.get(f"{srv.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": head[-1].id or ""})
        assert chunks(head) + chunks(parse(r.content)) == "a b c d e f g h i j"
        assert probes["count"].how == "finished"


def test_policy_finish_per_request_keeps_generating_after_a_disconnect(
    serve: Serve, probes: dict[str, Probe]
) -> None:
    with serve(disconnect_grace_s=0) as srv:
        stream_id, _, _ = start(srv, 2, model="quick", disconnect="finish")
        wait_for(lambda: probes["quick"].how is not None)
        assert probes["quick"].how == "finished"
        r = httpx.get(f"{srv.url}/chat/stream/{stream_id}")
        assert chunks(parse(r.content)) == WORDS


# ---- heartbeats, timeouts, fallbacks, limits ------------------------------------------------


def test_idle_streams_carry_ping_comments(serve: Serve, script: Script) -> None:
    script.plays["gappy"] = [[("text", "a"), ("sleep", 0.4), ("text", "b")]]
    with serve(heartbeat_s=0.05, models={"gappy": ModelConfig("gappy", "scripted")}) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "gappy"}, timeout=10)
    assert r.text.count(": ping\n\n") >= 3 and chunks(parse(r.content)) == "ab"


def test_no_first_token_in_time_is_a_504_before_any_byte(serve: Serve, script: Script) -> None:
    script.plays["mute"] = [[("sleep", 30), ("text", "late")]]
    with serve(ttft_timeout_s=0.2, heartbeat_s=5, models={"mute": ModelConfig("mute", "scripted")}) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "mute"}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert script.cancelled == ["mute"]


def test_a_stall_after_the_first_token_is_an_in_band_timeout(serve: Serve, script: Script) -> None:
    script.plays["stall"] = [[("text", "a"), ("sleep", 30)]]
    with serve(idle_timeout_s=0.2, models={"stall": ModelConfig("stall", "scripted")}) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "stall"}, timeout=10)
    events = parse(r.content)
    assert r.status_code == 200 and '"code":"upstream_timeout"' in events[-2].data
    assert script.cancelled == ["stall"]


def test_a_failing_model_falls_back_before_its_first_token(serve: Serve, script: Script) -> None:
    script.plays["flaky"] = [[("fail", "upstream_unavailable")]]
    flaky = ModelConfig("flaky", "scripted", fallbacks=("quick",))
    with serve(retries=1, retry_backoff_s=0.01, models={"flaky": flaky}) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "a b", "model": "flaky"}, timeout=10)
    assert r.status_code == 200 and chunks(parse(r.content)) == "a b"
    assert len(script.attempts["flaky"]) == 2


def test_beyond_max_concurrent_a_429_comes_before_any_byte(serve: Serve) -> None:
    with (
        serve(max_concurrent=1) as srv,
        httpx.stream("POST", f"{srv.url}/chat/stream", json={"message": WORDS, "model": "slow"}) as running,
    ):
        read_until(running, 1)
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "quick"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"


# ---- the AI SDK's resume ------------------------------------------------------------------------


def test_the_ai_sdk_resume_replays_the_chat_from_its_start(serve: Serve) -> None:
    chat = f"chat-{time.monotonic_ns()}"
    body = {
        "id": chat,
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": WORDS}]}],
    }
    with serve(disconnect_grace_s=5) as srv:
        assert httpx.get(f"{srv.url}/api/chat/{chat}/stream").status_code == 204
        with httpx.stream("POST", f"{srv.url}/api/chat", json={**body, "model": "slow"}, timeout=10) as r:
            assert r.status_code == 200
            read_until_text(r, '"text-delta"', 3)
        replay = httpx.get(f"{srv.url}/api/chat/{chat}/stream", timeout=10)
        assert replay.status_code == 200
        assert replay.headers["x-vercel-ai-ui-message-stream"] == "v1"
        parts = [e.data for e in parse(replay.content)]
        assert '"type":"start"' in parts[0] and parts[-1] == "[DONE]"
        deltas = "".join(p.split('"delta":"', 1)[1].split('"', 1)[0] for p in parts if '"text-delta"' in p)
        assert deltas == WORDS
        assert (
            httpx.get(f"{srv.url}/api/chat/{chat}/stream").status_code == 204
        )  # finished: nothing to resume


def read_until_text(response: httpx.Response, marker: str, count: int) -> None:
    seen = b""
    for piece in response.iter_raw():
        seen += piece
        if seen.count(marker.encode()) >= count:
            return
    raise AssertionError("the stream ended early")
