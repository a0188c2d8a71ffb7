from __future__ import annotations

import httpx

from tests.live import LiveServer


def test_echo_streams_chunks_then_done(server: LiveServer) -> None:
    with httpx.stream("POST", f"{server.url}/chat/stream", json={"message": "Say hello"}) as r:
        body = r.read().decode()
    assert r.headers["cache-control"] == "no-cache"
    assert '"text":"Say "' in body and body.endswith("data: [DONE]\n\n")
