"""``sluiceway bench``: the scanner on exact bytes, and whole runs against real servers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluiceway.cli.bench import (
    WIRES,
    BenchConfig,
    Sample,
    Scanner,
    format_report,
    is_loopback,
    percentiles,
    summarise,
)
from sluiceway.cli.main import main
from sluiceway.events import ErrorEvent, Finish, TextDelta, Usage
from sluiceway.testing.upstreams import OpenAIUpstream, Script, run_upstream
from sluiceway.wire.seed import SeedEncoder
from tests.live import LiveServer, live_server, make_settings

PROMPT = "one two three four five"


def seed_bytes(*texts: str, error: bool = False) -> bytes:
    encoder = SeedEncoder("s")
    events: list[Any] = [Usage(1, 0), *[TextDelta(t) for t in texts], Usage(1, len(texts))]
    events += [ErrorEvent("upstream_error", "x"), Finish("error")] if error else [Finish("stop")]
    return b"".join(encoder.encode(seq, ev) for seq, ev in enumerate(events, 1))


OPENAI = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" \\"content\\":\\"x"}}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("cut", range(0, len(seed_bytes("a ", "bé ", "✓")), 7))
def test_seed_scanner_counts_text_events_at_any_split(cut: int) -> None:
    data = seed_bytes("a ", "bé ", "✓")
    scanner = Scanner(WIRES["seed"])
    found = scanner.feed(data[:cut]) + scanner.feed(data[cut:])
    assert found == 3 and scanner.done and scanner.usage == 3 and scanner.error is None


def test_seed_scanner_notes_in_band_errors() -> None:
    scanner = Scanner(WIRES["seed"])
    scanner.feed(seed_bytes("a ", error=True))
    assert scanner.error == "in-band upstream_error" and scanner.events == 1


@pytest.mark.parametrize("cut", range(0, len(OPENAI), 11))
def test_openai_scanner_skips_the_empty_role_delta(cut: int) -> None:
    scanner = Scanner(WIRES["openai"])
    assert scanner.feed(OPENAI[:cut]) + scanner.feed(OPENAI[cut:]) == 2
    assert scanner.done and scanner.usage == 2 and scanner.tokens == 2


def test_openai_scanner_notes_in_band_errors() -> None:
    scanner = Scanner(WIRES["openai"])
    scanner.feed(b'data: {"error":{"message":"m","type":"server_error","code":null}}\n\n')
    assert scanner.error == "in-band server_error" and not scanner.done


def test_percentiles_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.8.9.1", True),
        ("http://localhost:1", True),
        ("http://[::1]:8000", True),
        ("http://10.0.0.1:8000", False),
        ("https://example.com", False),
        ("http://localhost.example.com", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["bench", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def test_seed_run_counts_every_request_and_token(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = bench(capsys, live.url, "-c", "8", "-n", "40", "--prompt", PROMPT)
    assert code == 0
    assert (report["ok"], report["failed"], report["unfinished"], report["errors"]) == (40, 0, 0, {})
    assert report["tokens"] == 40 * 5
    assert report["requests_per_s"] > 0 and report["tokens_per_s"] > 0
    assert all(report["ttft_ms"][key] is not None for key in ("p50", "p90", "p99", "max"))
    assert report["ttft_ms"]["p50"] <= report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_openai_run_against_the_servers_openai_route(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = bench(capsys, live.url, "--protocol", "openai", "-c", "4", "-n", "12", "--prompt", PROMPT)
    assert code == 0 and report["ok"] == 12 and report["tokens"] == 12 * 5, report


def test_openai_run_against_openais_exact_wire_format(capsys: pytest.CaptureFixture[str]) -> None:
    upstream = OpenAIUpstream(Script(reply="the vendor says hello", delay_ms=1))
    with run_upstream(upstream) as url:
        code, report = bench(capsys, url, "--protocol", "openai", "--model", "mock", "-c", "3", "-n", "9")
    assert code == 0 and report["ok"] == 9 and report["tokens"] == 9 * 4, report


def test_failures_are_counted_by_kind(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = bench(capsys, live.url, "--model", "echo-fail", "-c", "4", "-n", "8", "--prompt", PROMPT)
    assert code == 1 and report["ok"] == 0 and report["errors"] == {"in-band upstream_error": 8}
    assert (report["tokens"], report["tokens_per_s"]) == (0, 0.0)  # failed streams' chunks are not throughput
    code, report = bench(capsys, live.url, "--model", "nope", "-c", "2", "-n", "4")
    assert code == 1 and report["errors"] == {"http 404 unknown_model": 4}


def test_max_seconds_bounds_the_run(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    long_prompt = " ".join(["word"] * 100)  # 25 s a request at 250 ms a word
    code, report = bench(
        capsys,
        live.url,
        "--model",
        "echo-crawl",
        "-c",
        "4",
        "-n",
        "1000",
        "--max-seconds",
        "0.5",
        "--prompt",
        long_prompt,
    )
    assert report["duration_s"] < 5
    assert report["unfinished"] == 4 and report["ok"] == 0 and code == 1


def test_remote_urls_need_allow_remote(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "http://10.1.2.3:8000"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["bench", "ftp://127.0.0.1"]) == 2


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1", "http://256.1.1.1"])
def test_an_invalid_url_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", url]) == 2
    assert capsys.readouterr().err.startswith(f"sluiceway bench: invalid URL {url!r}")


def test_the_table() -> None:
    config = BenchConfig(url="http://127.0.0.1:1")
    failed = [Sample(0.1, None, 0, "http 503"), Sample(0.3, 0.02, 7, "in-band upstream_error")]
    report = summarise(config, [Sample(0.2, 0.01, 10), *failed], 1, 2.0)
    table = format_report(report)
    assert "1 ok · 2 failed · 1 unfinished of 100 in 2.00 s" in table
    assert "0.5 requests/s · 5 tokens/s (10 tokens)" in table
    assert "errors      http 503: 1, in-band upstream_error: 1" in table
    assert table.splitlines()[4].split() == ["TTFT", "ms", "10.0", "10.0", "10.0", "10.0"]


def test_api_key_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    key = "sk-bench-0123456789abcdef"
    with live_server(make_settings(api_keys=[key])) as server:
        code, report = bench(capsys, server.url, "-c", "2", "-n", "4", "--prompt", PROMPT)
        assert code == 1 and report["errors"] == {"http 401 unauthorized": 4}
        code, report = bench(capsys, server.url, "-c", "2", "-n", "4", "--prompt", PROMPT, "--api-key", key)
        assert code == 0 and report["ok"] == 4
