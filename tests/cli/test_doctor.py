"""``sluiceway doctor`` against a real server, directly and behind a real nginx.

What makes nginx hold an SSE stream back here: uvicorn answers with chunked encoding, and nginx
1.22 hands every complete chunk on at once even with ``proxy_buffering on``. What does hold it back
is a filter that waits for a flush, such as ``gzip``, and nginx flushes only when it is not
buffering. So the buffered setup is the classic one: ``proxy_buffering on``, the server's
``X-Accel-Buffering: no`` ignored, gzip for ``text/event-stream``; the fixed one turns buffering off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluiceway.cli.doctor import Check, Observation, check_heartbeats, check_incremental
from sluiceway.cli.main import main
from sluiceway.providers.base import ModelConfig
from tests.cli.nginx import nginx_proxy
from tests.cli.test_chat import ClosedPipe
from tests.live import LiveServer, free_port, live_server, make_settings

GZIP = ["gzip on", "gzip_types text/event-stream", "gzip_min_length 0"]
BUFFERING = ["proxy_buffering on", "proxy_ignore_headers X-Accel-Buffering", *GZIP]
NOT_BUFFERING = ["proxy_buffering off", *GZIP]
HONOURS_HEADER = ["proxy_buffering on", *GZIP]
ARGS = ["--model", "echo-paced", "--words", "8", "--heartbeat-wait", "0.6", "--json"]


@pytest.fixture(scope="module")
def paced() -> Iterator[LiveServer]:
    """A server whose echo-paced model takes 120 ms a word, pinging after 50 ms of silence."""
    models = {"echo-paced": ModelConfig("echo-paced", "echo", options={"delay_ms": 120})}
    with live_server(make_settings(models=models, heartbeat_s=0.05)) as server:
        yield server


def doctor(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, dict[str, Check]]:
    code = main(["doctor", url, *args])
    report = json.loads(capsys.readouterr().out)
    return code, {c["name"]: Check(**c) for c in report["checks"]}


def statuses(checks: dict[str, Check]) -> dict[str, str]:
    return {name: check.status for name, check in checks.items()}


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


ALL_OK = {"reachable": "ok", "incremental": "ok", "heartbeats": "ok", "resume": "ok"}


def test_direct_to_the_server_everything_is_ok(paced: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, paced.url, *ARGS)
    assert (code, statuses(checks)) == (0, ALL_OK), checks


def test_nginx_buffering_is_caught_with_its_fix(
    paced: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with nginx_proxy(port_of(paced), tmp_path / "nginx", BUFFERING) as url:
        code, checks = doctor(capsys, url, *ARGS)
    assert code == 1
    assert statuses(checks) == {**ALL_OK, "incremental": "fail", "heartbeats": "fail"}, checks
    assert "buffers the stream" in checks["incremental"].detail
    assert "Content-Encoding: gzip" in checks["incremental"].detail
    assert "proxy_buffering off;" in (checks["incremental"].fix or "")
    assert "held back" in checks["heartbeats"].detail


def test_nginx_without_buffering_is_ok(
    paced: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with nginx_proxy(port_of(paced), tmp_path / "nginx", NOT_BUFFERING) as url:
        code, checks = doctor(capsys, url, *ARGS)
    assert (code, statuses(checks)) == (0, ALL_OK), checks


def test_nginx_honouring_x_accel_buffering_is_ok(
    paced: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with nginx_proxy(port_of(paced), tmp_path / "nginx", HONOURS_HEADER) as url:
        code, checks = doctor(capsys, url, *ARGS)
    assert (code, statuses(checks)) == (0, ALL_OK), checks


def test_a_proxy_that_only_routes_post_breaks_resume(
    paced: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ("= /healthz", "= /chat/stream")
    with nginx_proxy(port_of(paced), tmp_path / "nginx", ["proxy_buffering off"], paths) as url:
        code, checks = doctor(capsys, url, *ARGS)
    assert code == 1 and checks["resume"].status == "fail"
    assert "GET /chat/stream/*" in (checks["resume"].fix or "")
    assert checks["incremental"].status == "ok"


def test_a_fast_model_cannot_tell(paced: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, paced.url, "--model", "echo", "--json")
    assert code == 0 and checks["incremental"].status == "warn"
    assert "--echo-delay-ms" in (checks["incremental"].fix or "")


def test_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, f"http://127.0.0.1:{free_port()}", "--json")
    assert code == 1 and statuses(checks) == {"reachable": "fail"}


def test_the_table(paced: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", paced.url, *ARGS[:-1]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sluiceway doctor · {paced.url} · model echo-paced\n")
    assert "  OK    incremental  8 chunks arrived over" in out


def observation(chunk_times: list[float], reads: list[float], pings: list[float], tps: float) -> Observation:
    seen = Observation(status=200, reads=reads, pings=pings)
    seen.chunks = [(t, i + 2, "w ") for i, t in enumerate(chunk_times)]
    done: dict[str, Any] = {"usage": {"output_tokens": len(chunk_times)}, "tokens_per_s": tps}
    seen.done = done
    return seen


def test_verdicts_from_arrival_times() -> None:
    paced_times = [0.1 * i for i in range(1, 11)]
    assert check_incremental(observation(paced_times, paced_times, [], 10.0)).status == "ok"
    bunched = [1.0] * 10
    assert check_incremental(observation(bunched, [1.0], [], 10.0)).status == "fail"
    two_bursts = [0.5] * 5 + [1.0] * 5
    assert check_incremental(observation(two_bursts, [0.5, 1.0], [], 10.0)).status == "fail"
    quiet = observation(paced_times, paced_times, [], 10.0)
    assert check_heartbeats(quiet, wait=1.0).status == "skip"
    assert check_heartbeats(quiet, wait=0.05).status == "fail"
    assert check_heartbeats(observation(paced_times, paced_times, [0.15], 10.0), wait=1.0).status == "ok"


def test_pings_that_arrive_on_their_own_are_not_blamed_on_a_proxy() -> None:
    """A --heartbeat-wait shorter than the server's heartbeat_s: silences exceed it, yet nothing buffers."""
    times = [1.0, 2.0, 3.0]
    lone = observation(times, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0], [0.5, 1.5, 2.5], 1.0)
    lone.lone_pings = [(0.5, 0.5), (1.5, 0.5), (2.5, 0.5)]
    check = check_heartbeats(lone, wait=0.3)
    assert check.status == "warn" and "pings only after about 0.50 s" in check.detail
    assert "proxy" not in check.detail + (check.fix or "") and "--heartbeat-wait" in (check.fix or "")
    told = check_heartbeats(observation(times, times, [], 1.0), wait=0.9, heartbeat_s=1.0)
    assert told.status == "warn"  # the server said its interval (``heartbeat_s`` in /healthz)
    overdue = check_heartbeats(observation(times, [3.0], [3.0], 1.0), wait=0.9, heartbeat_s=1.0)
    assert overdue.status == "fail" and "held back" in overdue.detail  # 3 s without a ping: held back


def test_the_servers_heartbeat_s_is_the_measure_when_healthz_tells_it() -> None:
    times = [1.0, 2.0, 3.0]
    held = observation(times, [0.5, 2.5, 3.0], [2.5, 2.5], 1.0)  # 2 s quiet, then pings with data
    assert check_heartbeats(held, wait=20.0).status == "ok"  # not told: within the wait, pings came
    told = check_heartbeats(held, wait=20.0, heartbeat_s=0.5)  # told: pings were due after 0.5 s
    assert told.status == "fail" and "heartbeat_s = 0.5 s" in told.detail and "held back" in told.detail
    assert check_heartbeats(held, wait=20.0, heartbeat_s=5.0).status == "ok"
    off = check_heartbeats(observation(times, times, [], 1.0), wait=0.5, heartbeat_s=0)
    assert off.status == "skip" and "heartbeat_s = 0" in off.detail


def test_a_wait_shorter_than_the_servers_heartbeat_warns(
    paced: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", "echo-paced", "--words", "4", "--heartbeat-wait", "0.03", "--json"]
    code, checks = doctor(capsys, paced.url, *args)
    assert code == 0 and checks["heartbeats"].status == "warn", checks
    assert (
        "heartbeat_s = 0.05 s of silence (its /healthz)" in checks["heartbeats"].detail
    )  # told, not guessed


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1", "http://256.1.1.1"])
def test_an_invalid_url_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sluiceway doctor: invalid URL {url!r}") and "Traceback" not in err


def test_a_closed_stdout_ends_quietly(
    paced: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout", ClosedPipe(lines=2))  # | head -2
    assert main(["doctor", paced.url, "--model", "echo", "--words", "3"]) == 141
    assert capsys.readouterr().err == ""
