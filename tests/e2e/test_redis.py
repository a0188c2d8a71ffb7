"""Two ``sluiceway serve`` processes sharing one real Redis: each resumes, fans out and stops the
other's streams. The command line is the one docs/streams.md gives for N instances."""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sluiceway.wire.sse import ServerSentEvent, SSEDecoder
from tests.streams.processes import ServerProcess, serve_process
from tests.streams.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.e2e
WORDS = " ".join(f"w{i}" for i in range(40))


DOCS = Path(__file__).resolve().parents[2] / "docs" / "streams.md"


def documented_commands(redis_url: str) -> list[list[str]]:
    """The ``sluiceway serve`` lines of the tested example in docs/streams.md, as arguments after
    ``serve`` (the port is left to the test; the Redis URL becomes the test's own server)."""
    block = DOCS.read_text().split("<!-- tested: tests/e2e/test_redis.py -->", 1)[1].split("```")[1]
    commands = []
    for line in block.splitlines():
        words = shlex.split(line.rstrip("& "))
        if words[:2] == ["sluiceway", "serve"]:
            args = [w.replace("redis://127.0.0.1:6379/0", redis_url) for w in words[2:]]
            port = args.index("--port")
            commands.append(args[:port] + args[port + 2 :])
    return commands


@pytest.fixture(scope="module")
def pair(redis_srv: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Instances A and B, started with the documented command lines (plus a short grace)."""
    first, second = documented_commands(redis_srv.url)
    assert "--redis-url" in first and redis_srv.url in first
    extra = ("--disconnect-grace-s", "1", "--heartbeat-s", "0.5")
    with serve_process(*first, *extra) as a, serve_process(*second, *extra) as b:
        yield a, b


def parse(body: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(body) + decoder.flush()


def text(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if '"type":"chunk"' in e.data)


def start_and_drop(srv: ServerProcess, n_chunks: int, **body: object) -> tuple[str, list[ServerSentEvent]]:
    """POST on ``srv``, read ``n_chunks`` chunks, drop the connection."""
    decoder, got = SSEDecoder(), []
    payload = {"message": WORDS, "model": "slow", **body}
    with httpx.stream("POST", f"{srv.url}/chat/stream", json=payload, timeout=20) as r:
        for piece in r.iter_raw():
            got.extend(decoder.feed(piece))
            if sum('"type":"chunk"' in e.data for e in got) >= n_chunks:
                return r.headers["x-stream-id"], got
    raise AssertionError("the stream ended early")


def test_a_stream_started_on_a_resumes_on_b_exactly(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    stream_id, head = start_and_drop(a, 5)
    r = httpx.get(
        f"{b.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": head[-1].id or ""}, timeout=20
    )
    assert r.status_code == 200 and r.headers["x-stream-id"] == stream_id
    tail = parse(r.content)
    assert text(head) + text(tail) == WORDS
    ids = [e.id for e in head + tail if e.data != "[DONE]"]
    assert len(ids) == len(set(ids))


def test_readers_on_both_instances_get_every_event(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    with httpx.stream("POST", f"{a.url}/chat/stream", json={"message": WORDS, "model": "slow"}) as first:
        stream_id = first.headers["x-stream-id"]
        on_b = httpx.get(f"{b.url}/chat/stream/{stream_id}", timeout=20)
        on_a = parse(first.read())
    assert text(on_a) == WORDS and text(parse(on_b.content)) == WORDS


def test_stop_on_b_cancels_the_generation_running_on_a(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    stream_id, _ = start_and_drop(a, 2, disconnect="finish")
    answer = httpx.post(f"{b.url}/chat/stream/{stream_id}/cancel", timeout=20).json()
    assert answer["status"] == "cancelled" and 2 <= answer["usage"]["output_tokens"] < 40


def test_a_reader_on_b_keeps_a_stream_of_a_alive_past_the_grace(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    stream_id, head = start_and_drop(a, 2)  # A's own reader is gone: its 1 s grace starts
    r = httpx.get(
        f"{b.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": head[-1].id or ""}, timeout=20
    )
    tail = parse(r.content)  # about 2 s of tokens: past A's grace, kept alive by the reader on B
    assert text(head) + text(tail) == WORDS and '"finish_reason":"stop"' in tail[-2].data


def test_when_the_last_reader_on_b_leaves_a_cancels_after_the_grace(
    pair: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    a, b = pair
    stream_id, _ = start_and_drop(a, 2)
    with httpx.stream("GET", f"{b.url}/chat/stream/{stream_id}", timeout=20) as r:
        next(r.iter_raw())
    left = time.monotonic()
    redis = redis_srv.client()  # watched from outside: an HTTP reader would keep the stream alive
    while redis.hget(f"sluiceway:{stream_id}:meta", "status") != b"finished":
        assert time.monotonic() < left + 10, "the stream was not cancelled"
        time.sleep(0.01)
    ended_after = time.monotonic() - left
    entries: Any = redis.xrevrange(f"sluiceway:{stream_id}:log", count=1)
    (_, fields), *_ = entries
    redis.close()
    assert json.loads(fields[b"e"])["r"] == "cancelled"
    assert 0.8 < ended_after < 1 + 1.0, ended_after  # the 1 s grace, measured from this process


def test_the_ai_sdk_resume_works_across_instances(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    chat = f"chat-{time.monotonic_ns()}"
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": WORDS}]}
    with httpx.stream(
        "POST", f"{a.url}/api/chat", json={"id": chat, "messages": [message], "model": "slow"}
    ) as r:
        assert r.status_code == 200
        next(r.iter_raw())
        replay = httpx.get(f"{b.url}/api/chat/{chat}/stream", timeout=20)
    parts = [json.loads(e.data) for e in parse(replay.content) if e.data != "[DONE]"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == WORDS
    assert httpx.get(f"{b.url}/api/chat/{chat}/stream", timeout=20).status_code == 204


def test_a_chat_resumes_its_newest_stream_whichever_instance_started_it(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    chat = f"chat-{time.monotonic_ns()}"

    def ask(srv: ServerProcess, text: str) -> None:
        message = {"id": "u", "role": "user", "parts": [{"type": "text", "text": text}]}
        body = {"id": chat, "messages": [message], "model": "slow"}
        with httpx.stream("POST", f"{srv.url}/api/chat", json=body, timeout=20) as r:
            next(r.iter_raw())

    ask(a, "first question")
    ask(b, WORDS)  # the next turn of the same chat lands on the other instance
    replay = httpx.get(f"{a.url}/api/chat/{chat}/stream", timeout=20)
    parts = [json.loads(e.data) for e in parse(replay.content) if e.data != "[DONE]"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == WORDS


def test_a_reader_on_b_gets_an_error_end_when_the_owner_is_killed() -> None:
    """SIGKILL of the instance running a stream: its reader on the other instance used to get pings
    until the keys expired (``total_timeout_s + retention_s``: 20 minutes by default)."""
    with (
        redis_server() as own_redis,
        serve_process("--redis-url", own_redis.url, "--heartbeat-s", "0.5") as a,
        serve_process("--redis-url", own_redis.url, "--heartbeat-s", "0.5") as b,
    ):
        stream_id, _ = start_and_drop(a, 2, disconnect="finish")
        with httpx.stream("GET", f"{b.url}/chat/stream/{stream_id}", timeout=20) as r:
            a.proc.kill()
            started = time.monotonic()
            tail = parse(r.read())
        assert time.monotonic() - started < 10
        error = json.loads(tail[-2].data)
        assert error["type"] == "error" and error["code"] == "shutting_down", tail[-2:]


def test_a_stream_read_only_on_a_killed_instance_is_cancelled_after_the_grace() -> None:
    """SIGKILL of the instance reading a stream of another: its reader was never uncounted in Redis,
    so the owner never cancelled and generated, for nobody, until ``total_timeout_s`` (600 s)."""
    long_answer = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a token
    args = ("--disconnect-grace-s", "1", "--heartbeat-s", "0.5")
    with (
        redis_server() as own_redis,
        serve_process("--redis-url", own_redis.url, *args) as a,
        serve_process("--redis-url", own_redis.url, *args) as b,
    ):
        stream_id, _ = start_and_drop(a, 2, message=long_answer)  # A's 1 s grace starts
        admin = own_redis.client()
        meta = f"sluiceway:{stream_id}:meta"
        killed = None
        with (
            contextlib.suppress(httpx.HTTPError),  # B's answer is cut by the kill
            httpx.stream("GET", f"{b.url}/chat/stream/{stream_id}", timeout=20) as r,
        ):
            reading_since = time.monotonic()
            for _ in r.iter_raw():  # past A's grace: the reader on B keeps the stream going
                if killed is None and time.monotonic() - reading_since > 2.5:
                    assert admin.hget(meta, "status") == b"running"
                    b.proc.kill()  # while its reader is attached: B never detaches it
                    killed = time.monotonic()
        assert killed is not None
        assert admin.hvals(f"sluiceway:{stream_id}:reader-instances") == [b"1"]
        while admin.hget(meta, "status") != b"finished":
            assert time.monotonic() < killed + 15, "the stream was not cancelled"
            time.sleep(0.05)
        ended_after = time.monotonic() - killed
        entries: Any = admin.xrevrange(f"sluiceway:{stream_id}:log", count=1)
        admin.close()
        (_, fields), *_ = entries
        assert json.loads(fields[b"e"])["r"] == "cancelled"
        # B is missing from its control channel for 3 s before it counts as gone, then A's 1 s grace
        assert 3 < ended_after < 10, ended_after


def test_redis_stopping_mid_stream_is_an_error_event_then_a_503() -> None:
    """Redis stopped under a running stream: its readers used to see the connection cut (and the
    server log a traceback); a new request was a 500."""
    with (
        redis_server() as own_redis,
        serve_process("--redis-url", own_redis.url, "--heartbeat-s", "0.5") as a,
    ):
        decoder, got = SSEDecoder(), []
        with httpx.stream("POST", f"{a.url}/chat/stream", json={"message": WORDS, "model": "slow"}) as r:
            for piece in r.iter_raw():
                got.extend(decoder.feed(piece))
                if len(got) == 2:
                    admin = own_redis.client()
                    with contextlib.suppress(redis.ConnectionError):
                        admin.shutdown(nosave=True)
                    admin.close()
        assert got[-1].data == "[DONE]"
        assert json.loads(got[-2].data)["code"] == "store_unavailable"
        again = httpx.post(f"{a.url}/chat/stream", json={"message": "hi"}, timeout=20)
        assert again.status_code == 503 and again.json()["error"]["code"] == "store_unavailable"
        assert "Traceback" not in a.output()
