"""Cancel with the embedded model, in every window: queued, evaluating the prompt, generating.

``LocalProvider.tokens_generated`` / ``prompt_tokens_evaluated`` count what the worker thread
computed, so "the provider stopped" is measured on the model itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from tests.live import LiveServer, live_server, make_settings

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytestmark = pytest.mark.local
GRACE = 0.5
STORY = "Write a very long story about a lighthouse keeper, with many chapters."


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    options = {"max_tokens": 2000, "temperature": 0.7, "seed": 1}
    models = {"local": ModelConfig("local", "local", options=options)}
    settings = make_settings(default_model="local", models=models, disconnect_grace_s=GRACE, heartbeat_s=0.05)
    with live_server(settings) as live:
        if "local" not in live.state.models.providers:
            pytest.skip(f"local model unavailable: {live.state.models.unavailable.get('local')}")
        yield live


def counter(srv: LiveServer, name: str) -> int:
    value: int = srv.call(lambda: getattr(srv.state.models.providers["local"], name))
    return value


def settle(srv: LiveServer, name: str, quiet: float = 0.5, timeout: float = 30) -> tuple[int, float]:
    """Poll a counter until it stops moving for ``quiet`` s: (its value, when it last moved)."""
    value, moved = counter(srv, name), time.monotonic()
    deadline = moved + timeout
    while time.monotonic() - moved < quiet:
        assert time.monotonic() < deadline, f"{name} kept moving"
        now = counter(srv, name)
        if now != value:
            value, moved = now, time.monotonic()
        time.sleep(0.002)
    return value, moved


def open_stream(srv: LiveServer, body: dict[str, Any]) -> tuple[httpx.Response, str]:
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", f"{srv.url}/chat/stream", json=body), stream=True)
    assert response.status_code == 200
    return response, response.headers["x-stream-id"]


def test_a_disconnect_stops_the_local_model_within_grace_plus_100_ms(srv: LiveServer) -> None:
    settle(srv, "tokens_generated")
    response, _ = open_stream(srv, {"message": STORY})
    pieces = response.iter_raw()
    while b'"chunk"' not in next(pieces):
        pass
    before = counter(srv, "tokens_generated")
    dropped = time.monotonic()
    response.close()
    after, last_moved = settle(srv, "tokens_generated")
    stopped_in = last_moved - dropped
    print(f"local: {after - before} tokens after the disconnect; stopped {stopped_in * 1000:.0f} ms after it")
    assert stopped_in < GRACE + 0.1 + 0.3  # + polling and scheduling noise on a shared machine
    assert after - before > 0  # it did keep going through the grace (a reload could resume)


def test_stop_works_while_queued_and_while_evaluating_the_prompt(srv: LiveServer) -> None:
    running, running_id = open_stream(srv, {"message": STORY, "disconnect": "finish"})
    long_prompt = " ".join(f"item{i}" for i in range(300))  # ~1200 tokens: seconds of prompt evaluation
    queued, queued_id = open_stream(srv, {"message": long_prompt, "disconnect": "finish"})
    evaluated = counter(srv, "prompt_tokens_evaluated")
    stop = httpx.post(f"{srv.url}/chat/stream/{queued_id}/cancel", timeout=30).json()
    assert stop["status"] == "cancelled" and stop["usage"]["output_tokens"] == 0
    assert stop["usage"]["input_tokens"] > 300  # known from the tokenizer, never evaluated
    httpx.post(f"{srv.url}/chat/stream/{running_id}/cancel", timeout=30)
    settle(srv, "tokens_generated")
    assert counter(srv, "prompt_tokens_evaluated") - evaluated < 100  # only the story's prompt, if at all
    running.close()
    queued.close()

    prompt, prompt_id = open_stream(srv, {"message": long_prompt, "disconnect": "finish"})
    start = counter(srv, "prompt_tokens_evaluated")
    moves: list[tuple[float, int]] = []  # (when, value) each time one prompt batch was evaluated
    while len(moves) < 3:
        if counter(srv, "prompt_tokens_evaluated") != (start if not moves else moves[-1][1]):
            moves.append((time.monotonic(), counter(srv, "prompt_tokens_evaluated")))
        time.sleep(0.001)
    batch_s = moves[2][0] - moves[1][0]
    asked = time.monotonic()
    stop = httpx.post(f"{srv.url}/chat/stream/{prompt_id}/cancel", timeout=30).json()
    done, last_moved = settle(srv, "prompt_tokens_evaluated")
    stopped_ms, batch_ms = (last_moved - asked) * 1000, batch_s * 1000
    print(f"local: prompt evaluation stopped {stopped_ms:.0f} ms after Stop (one batch: {batch_ms:.0f} ms)")
    assert stop["status"] == "cancelled" and stop["usage"]["output_tokens"] == 0
    assert done - start < stop["usage"]["input_tokens"]  # stopped part way through the prompt
    assert last_moved - asked < 2 * batch_s + 0.3  # the batch being evaluated, then it checks
    prompt.close()
