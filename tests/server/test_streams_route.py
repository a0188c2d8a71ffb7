"""Streams by id (``routes/streams.py``): resuming checks ``after`` against the stream's log.

The rest of the resume, Stop and AI SDK resume behaviour is covered over real HTTP, on both
backends, in test_lifecycle.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from sluiceway.wire.sse import SSEDecoder
from tests.live import LiveServer, live_server, make_settings
from tests.streams.redis_server import RedisServer

WORDS = " ".join(f"w{i}" for i in range(40))
MODELS = {"slow": ModelConfig("slow", "echo", options={"delay_ms": 20})}


@pytest.fixture
def srv(backend: dict[str, Any]) -> Iterator[LiveServer]:
    with live_server(make_settings(models=MODELS, disconnect_policy="finish", **backend)) as live:
        yield live


def start_and_read(srv: LiveServer, n_events: int) -> tuple[str, int]:
    """POST a slow answer, read ``n_events`` events, drop the connection: (stream id, last seq seen)."""
    decoder, seen = SSEDecoder(), []
    body = {"message": WORDS, "model": "slow"}
    with httpx.stream("POST", f"{srv.url}/chat/stream", json=body, timeout=10) as r:
        for piece in r.iter_raw():
            seen.extend(e for e in decoder.feed(piece) if e.id)
            if len(seen) >= n_events:
                break
    return r.headers["x-stream-id"], int((seen[-1].id or "").rpartition(":")[2])


def assert_past_the_end(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "past the stream's last event" in error["message"]


def resume_all_ways(srv: LiveServer, stream_id: str, after: int) -> list[httpx.Response]:
    """``?after=``, ``Last-Event-ID`` on the GET (EventSource) and on the seed POST (fetch clients)."""
    url = f"{srv.url}/chat/stream/{stream_id}"
    header = {"Last-Event-ID": f"{stream_id}:{after}"}
    return [
        httpx.get(url, params={"after": after}, timeout=10),
        httpx.get(url, headers=header, timeout=10),
        httpx.post(f"{srv.url}/chat/stream", json={"message": "x"}, headers=header, timeout=10),
    ]


def test_resuming_after_an_event_not_logged_yet_is_a_400(srv: LiveServer) -> None:
    stream_id, seen = start_and_read(srv, 3)
    for response in resume_all_ways(srv, stream_id, 999):  # running: it would only ever send pings
        assert_past_the_end(response)
    rest = httpx.get(f"{srv.url}/chat/stream/{stream_id}", params={"after": seen}, timeout=10)
    assert rest.status_code == 200 and rest.text.endswith("data: [DONE]\n\n")
    last = max(int(e.id.rpartition(":")[2]) for e in SSEDecoder().feed(rest.content) if e.id)
    for response in resume_all_ways(srv, stream_id, last + 1):  # finished: it used to be a 204
        assert_past_the_end(response)
        assert f"last event {last} " in response.json()["error"]["message"]
    assert httpx.get(f"{srv.url}/chat/stream/{stream_id}", params={"after": last}).status_code == 204


def test_a_remote_stream_is_checked_against_its_newest_entry_in_redis(redis_srv: RedisServer) -> None:
    settings = make_settings(models=MODELS, disconnect_policy="finish", redis_url=redis_srv.url)
    with live_server(settings) as owner, live_server(settings) as other:
        stream_id, seen = start_and_read(owner, 3)
        for response in resume_all_ways(other, stream_id, 999):
            assert_past_the_end(response)
        rest = httpx.get(f"{other.url}/chat/stream/{stream_id}", params={"after": seen}, timeout=10)
        assert rest.status_code == 200 and rest.text.endswith("data: [DONE]\n\n")
