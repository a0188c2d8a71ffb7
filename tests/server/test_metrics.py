"""GET /metrics: names, labels and values after scripted echo streams (counts, never timings)."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluiceway.providers.base import ModelConfig
from sluiceway.server.app import create_app
from sluiceway.server.metrics import ITL_BUCKETS, Histogram, Metrics
from tests.live import LiveServer, live_server, make_settings

MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3, "fail_code": "upstream_error"}),
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(srv: LiveServer) -> Samples:
    r = httpx.get(f"{srv.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_idle(srv: LiveServer, within: float = 10.0) -> Samples:
    """Scrape until no generation is active (they end just after their last byte is read)."""
    deadline = time.monotonic() + within
    while True:
        samples = scrape(srv)
        active = sum(v for (name, _), v in samples.items() if name == "sluiceway_active_streams")
        if active == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def seed(srv: LiveServer, text: str, **body: object) -> httpx.Response:
    return httpx.post(f"{srv.url}/chat/stream", json={"message": text, **body}, timeout=10)


def openai(srv: LiveServer, text: str) -> httpx.Response:
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=10)


@pytest.fixture
def srv():  # type: ignore[no-untyped-def]
    with live_server(make_settings(models=MODELS, disconnect_grace_s=0)) as live:
        yield live


def test_counts_after_scripted_streams(srv: LiveServer) -> None:
    assert seed(srv, "one two three four").status_code == 200  # 4 tokens, stop
    assert seed(srv, "five six seven", max_tokens=2).status_code == 200  # 2 tokens, length
    assert openai(srv, "alpha beta gamma").status_code == 200  # 3 tokens, stop
    assert seed(srv, "a b c d e", model="echo-fail").status_code == 200  # 3 tokens, then a failure
    s = wait_idle(srv)

    echo_seed = {"model": "echo", "provider": "echo", "protocol": "seed"}
    echo_openai = {**echo_seed, "protocol": "openai"}
    fail_seed = {**echo_seed, "model": "echo-fail"}
    assert value(s, "sluiceway_output_tokens_total", **echo_seed) == 6
    assert value(s, "sluiceway_output_tokens_total", **echo_openai) == 3
    assert value(s, "sluiceway_output_tokens_total", **fail_seed) == 3
    assert value(s, "sluiceway_time_to_first_token_seconds_count", **echo_seed) == 2
    assert value(s, "sluiceway_time_to_first_token_seconds_count", **echo_openai) == 1
    assert value(s, "sluiceway_inter_token_latency_seconds_count", **echo_seed) == 3 + 1
    assert value(s, "sluiceway_inter_token_latency_seconds_count", **echo_openai) == 2
    assert value(s, "sluiceway_inter_token_latency_seconds_count", **fail_seed) == 2
    assert value(s, "sluiceway_generations_completed_total", **echo_seed, reason="stop") == 1
    assert value(s, "sluiceway_generations_completed_total", **echo_seed, reason="length") == 1
    assert value(s, "sluiceway_generations_completed_total", **echo_openai, reason="stop") == 1
    assert value(s, "sluiceway_generations_failed_total", **fail_seed, code="upstream_error") == 1
    assert value(s, "sluiceway_generations_cancelled_total", **echo_seed) == 0
    for labels in (echo_seed, echo_openai, fail_seed):
        assert value(s, "sluiceway_active_streams", **labels) == 0
        count = value(s, "sluiceway_time_to_first_token_seconds_count", **labels)
        assert value(s, "sluiceway_time_to_first_token_seconds_bucket", **labels, le="+Inf") == count
        assert value(s, "sluiceway_time_to_first_token_seconds_sum", **labels) > 0


def test_active_stream_then_cancelled_by_disconnect(srv: LiveServer) -> None:
    labels = {"model": "echo-slow", "provider": "echo", "protocol": "seed"}
    body = {"message": " ".join(["word"] * 100), "model": "echo-slow"}
    with httpx.stream("POST", f"{srv.url}/chat/stream", json=body, timeout=10) as r:
        chunks = r.iter_raw()
        next(chunks)  # the first text has arrived: the generation is running
        assert value(scrape(srv), "sluiceway_active_streams", **labels) == 1
    s = wait_idle(srv)
    assert value(s, "sluiceway_active_streams", **labels) == 0
    assert value(s, "sluiceway_generations_cancelled_total", **labels) == 1
    assert value(s, "sluiceway_time_to_first_token_seconds_count", **labels) == 1
    assert 1 <= value(s, "sluiceway_output_tokens_total", **labels) < 100


def test_each_app_has_its_own_registry() -> None:
    first, second = create_app(make_settings()), create_app(make_settings())
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.stream_started("echo", "seed")
    assert b'sluiceway_active_streams{model="echo",protocol="seed",provider="echo"} 1.0' in (
        first.state.metrics.render()
    )
    assert b"sluiceway_active_streams{" not in second.state.metrics.render()


def test_unknown_model_and_protocol_labels() -> None:
    metrics = Metrics({"echo": "echo"})
    assert metrics.labels("gone", "") == ("gone", "unknown", "unknown")


@pytest.mark.parametrize(
    ("observed", "bucket"),
    [(0.0, 0), (0.001, 0), (0.0011, 1), (0.02, 4), (5.0, 11), (5.1, 12)],
)
def test_histogram_buckets_are_upper_bounds_inclusive(observed: float, bucket: int) -> None:
    histogram = Histogram(ITL_BUCKETS)
    histogram.observe(observed)
    assert histogram.counts.index(1) == bucket
    cumulative = histogram.buckets()
    assert cumulative[-1] == ("+Inf", 1.0)
    assert [count for _, count in cumulative[:bucket]] == [0.0] * bucket
