"""One log line per request: its fields over real uvicorn, and the JSON form end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from sluiceway.server.request_log import QUIET_LOGGERS, JsonFormatter, configure_logging, summary
from tests.live import LiveServer, free_port, live_server, make_settings

MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3, "fail_code": "upstream_error"}),
}


@pytest.fixture
def srv(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="sluiceway")
    with live_server(make_settings(models=MODELS, disconnect_grace_s=0)) as live:
        yield live


def logged(caplog: pytest.LogCaptureFixture, request_id: str, within: float = 10.0) -> dict[str, Any]:
    """The fields of the line logged for ``request_id`` (written just after the response ends)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            fields = getattr(record, "request", None)
            if record.name == "sluiceway.requests" and fields and fields["request_id"] == request_id:
                return dict(fields)
        time.sleep(0.01)
    raise AssertionError(f"no request line for {request_id}")


def post(srv: LiveServer, body: dict[str, Any], request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-Id": request_id} if request_id else {}
    return httpx.post(f"{srv.url}/chat/stream", json=body, headers=headers, timeout=10)


def test_a_streamed_request_logs_its_stream(srv: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    r = post(srv, {"message": "one two three"}, request_id="req-42")
    assert r.headers["x-request-id"] == "req-42"
    fields = logged(caplog, "req-42")
    assert fields["duration_ms"] > 0 and fields["ttft_ms"] >= 0
    assert fields["ttft_ms"] <= fields["duration_ms"]
    del fields["duration_ms"], fields["ttft_ms"]
    assert fields == {
        "request_id": "req-42",
        "method": "POST",
        "path": "/chat/stream",
        "status": 200,
        "stream_id": r.headers["x-stream-id"],
        "model": "echo",
        "protocol": "seed",
        "tokens": 3,
        "outcome": "stop",
    }
    assert not [r for r in caplog.records if hasattr(r, "generation")]  # read to its end: one line only


def test_openai_protocol_and_a_failed_stream(srv: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": "echo-fail", "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=10)
    fields = logged(caplog, r.headers["x-request-id"])
    assert (fields["protocol"], fields["model"], fields["status"]) == ("openai", "echo-fail", 200)
    assert (fields["tokens"], fields["outcome"]) == (3, "upstream_error")


def test_a_rejected_request_gets_a_fresh_id(srv: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    r = post(srv, {"message": "hi", "model": "nope"}, request_id="not a valid id!")
    assert r.status_code == 404
    request_id = r.headers["x-request-id"]
    assert len(request_id) == 16 and request_id != "not a valid id!"
    fields = logged(caplog, request_id)
    assert (fields["status"], fields["outcome"], fields["stream_id"], fields["tokens"]) == (
        404,
        "rejected",
        None,
        None,
    )


def test_a_client_that_leaves(srv: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    body = {"message": " ".join(["word"] * 100), "model": "echo-slow"}
    headers = {"X-Request-Id": "leaver"}
    with httpx.stream("POST", f"{srv.url}/chat/stream", json=body, headers=headers, timeout=10) as r:
        chunks = r.iter_raw()
        next(chunks)
    fields = logged(caplog, "leaver")
    assert fields["outcome"] in ("disconnected", "cancelled")
    assert 1 <= fields["tokens"] < 100


def test_json_formatter_puts_fields_at_the_top() -> None:
    record = logging.LogRecord("sluiceway.requests", logging.INFO, __file__, 1, "m %s", ("x",), None)
    record.request = {"request_id": "r1", "status": 200, "outcome": "stop"}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "m x" and line["level"] == "info" and line["logger"] == "sluiceway.requests"
    assert (line["request_id"], line["status"], line["outcome"]) == ("r1", 200, "stop")
    assert line["ts"].endswith("+00:00")


def test_text_summary() -> None:
    fields = {"method": "GET", "path": "/healthz", "status": 200, "stream_id": None, "outcome": "ok"}
    assert summary(fields) == "GET /healthz 200 outcome=ok"


def test_a_path_cannot_start_a_line_of_its_own_in_the_text_log() -> None:
    path = "/chat/stream/x\nERROR sluiceway.auth: FAKE\r\x00\u2028"  # as decoded from %0A, %0D, %00
    fields = {"method": "GET", "path": path, "status": 404, "outcome": "rejected"}
    line = summary(fields)
    assert line == "GET /chat/stream/x\\x0aERROR sluiceway.auth: FAKE\\x0d\\x00\\u2028 404 outcome=rejected"
    assert line.isprintable()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put every piece of it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    configure_logging("json")  # pytest's handlers are there: nothing changes
    assert root.handlers == before
    configure_logging("json", force=True)
    logging.getLogger("sluiceway.test").warning("hello %s", "world")
    root.handlers[:] = before
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["message"], line["level"]) == ("hello world", "warning")


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_quiets_the_http_clients_request_lines() -> None:
    client = logging.getLogger("httpx2")
    configure_logging("text", force=True)
    assert not client.isEnabledFor(logging.INFO)  # one line per upstream request otherwise
    assert client.isEnabledFor(logging.WARNING)
    assert logging.getLogger("sluiceway.requests").isEnabledFor(logging.INFO)


def test_serve_log_format_json_writes_only_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "sluiceway.toml"
    config.write_text('default_model = "echo"\n[models.local]\nprovider = "echo"\n')
    port = free_port()
    env = {**os.environ, "SLUICEWAY_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "sluiceway", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-format", "json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        r = httpx.post(f"{url}/chat/stream", json={"message": "hi there"}, timeout=10)
        assert r.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    chats = [line for line in lines if line.get("path") == "/chat/stream"]
    assert len(chats) == 1
    assert (chats[0]["status"], chats[0]["tokens"], chats[0]["outcome"]) == (200, 2, "stop")
    assert any(line["logger"].startswith("uvicorn") for line in lines)
