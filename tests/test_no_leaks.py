"""No key leaks: a scripted session through every protocol, with upstreams that echo our keys back.

The upstream keys live in environment variables, as in production. The local upstreams answer with
the key they were sent inside their error messages (before the stream and mid-stream), one provider
has a bug that raises with the key in its text, and clients send their own sluiceway keys in every
accepted place. Every response body and header, and every log record of the whole session (every
logger, DEBUG and up, server and SDKs), is then searched for each key.

Two captures see each record: ``raw`` before redaction and ``served`` through the
:class:`~sluiceway.server.logs.RedactingFilter` that ``sluiceway serve`` installs. Sluiceway itself
logs no key at all (``raw`` is clean) except where a key enters a log line from outside - a buggy
provider's traceback, a key a client put in a query string - and there ``served`` is clean.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx
import openai
import pytest
from websockets.sync.client import connect

from sluiceway.events import Event
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.registry import ProviderRegistry
from sluiceway.requests import ChatRequest
from sluiceway.server.app import create_app
from sluiceway.server.logs import RedactingFilter, upstream_secrets
from sluiceway.testing import AnthropicUpstream, OpenAIUpstream, Script, run_upstream
from tests.live import LiveServer, live_server, make_settings

OPENAI_KEY = "sk-proj-" + secrets.token_hex(16)  # shaped like a vendor key
ANTHROPIC_KEY = "plain-" + secrets.token_hex(16)  # not shaped like anything: only its value betrays it
BUGGY_KEY = "buggy-" + secrets.token_hex(16)
CLIENT_KEY = "client-" + secrets.token_hex(16)
WRONG_CLIENT_KEY = "wrong-" + secrets.token_hex(16)
UPSTREAM_KEYS = (OPENAI_KEY, ANTHROPIC_KEY, BUGGY_KEY)
ALL_KEYS = (*UPSTREAM_KEYS, CLIENT_KEY, WRONG_CLIENT_KEY)
CLIENT_SIDE_LOGGERS = ("websockets.client",)  # the test's own WebSocket client logs its headers


class BuggyProvider:
    """A provider with a bug: it fails with its key in the exception text."""

    def __init__(self, config: ModelConfig) -> None:
        import os

        self.key = os.environ[config.api_key_env or ""]

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        raise RuntimeError(f"could not authenticate with {self.key}")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        return None


def buggy(config: ModelConfig) -> Provider:
    return BuggyProvider(config)


class Capture(logging.Handler):
    """Every record, fully formatted (message, traceback, extras)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(CLIENT_SIDE_LOGGERS):
            extras = getattr(record, "request", None)
            self.lines.append(self.format(record) + (f" {extras}" if extras else ""))

    def text(self) -> str:
        return "\n".join(self.lines)


def leaked(text: str, keys: tuple[str, ...] = ALL_KEYS) -> list[str]:
    return [key for key in keys if key in text]


@pytest.fixture
def captures() -> Iterator[tuple[Capture, Capture]]:
    raw, served = Capture(), Capture()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.handlers.insert(0, raw)  # first of all: sees each record before any filter rewrites it
        logger.addHandler(served)
        logger.setLevel(logging.DEBUG)
    try:
        yield raw, served
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(raw)
            logger.removeHandler(served)
            logger.setLevel(level)


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch, captures: tuple[Capture, Capture]) -> Iterator[LiveServer]:
    """A server whose models point at local upstreams that echo keys back."""
    monkeypatch.setenv("LEAK_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("LEAK_ANTHROPIC_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("LEAK_BUGGY_KEY", BUGGY_KEY)
    refusing_openai = OpenAIUpstream(Script(api_key="sk-the-right-one-" + "x" * 16))
    failing_openai = OpenAIUpstream(Script(reply="one two three four", fail_after=2))
    refusing_anthropic = AnthropicUpstream(Script(api_key="the-right-one"))
    failing_anthropic = AnthropicUpstream(Script(reply="one two three four", fail_after=2))
    failing_openai.script.fail_message = f"key {OPENAI_KEY} is over quota"
    failing_anthropic.script.fail_message = f"key {ANTHROPIC_KEY} is over quota"
    with (
        run_upstream(refusing_openai) as refusing_openai_url,
        run_upstream(failing_openai) as failing_openai_url,
        run_upstream(refusing_anthropic) as refusing_anthropic_url,
        run_upstream(failing_anthropic) as failing_anthropic_url,
    ):
        openai_env, anthropic_env = "LEAK_OPENAI_KEY", "LEAK_ANTHROPIC_KEY"
        models = {
            "gpt-refused": ModelConfig("gpt-refused", "openai", "m", refusing_openai_url + "/v1", openai_env),
            "gpt-failing": ModelConfig("gpt-failing", "openai", "m", failing_openai_url + "/v1", openai_env),
            "claude-refused": ModelConfig(
                "claude-refused", "anthropic", "m", refusing_anthropic_url, anthropic_env
            ),
            "claude-failing": ModelConfig(
                "claude-failing", "anthropic", "m", failing_anthropic_url, anthropic_env
            ),
            "buggy": ModelConfig("buggy", "buggy", api_key_env="LEAK_BUGGY_KEY"),
        }
        settings = make_settings(models=models, api_keys=[CLIENT_KEY])
        captures[1].addFilter(RedactingFilter(upstream_secrets(settings)))
        registry = ProviderRegistry.from_entry_points()
        registry.register("buggy", buggy)
        with live_server(app=create_app(settings, registry)) as live:
            for name in ("uvicorn.error", "uvicorn.access"):  # uvicorn set them when it started
                logging.getLogger(name).setLevel(logging.DEBUG)
            yield live


BEARER = {"Authorization": f"Bearer {CLIENT_KEY}"}


def user(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_no_key_in_any_response_or_log_line(session: LiveServer, captures: tuple[Capture, Capture]) -> None:
    raw, served = captures
    url = session.url
    seen: list[str] = []

    def record(r: httpx.Response) -> httpx.Response:
        seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    # refused upstream keys, answered before the first byte in each protocol's shape
    r = record(
        httpx.post(url + "/chat/stream", json={"message": "hi", "model": "gpt-refused"}, headers=BEARER)
    )
    assert r.status_code == 502 and "[redacted]" in r.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as refused:
        openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0).chat.completions.create(
            model="gpt-refused",
            messages=user(),
            stream=True,  # type: ignore[arg-type]
        )
    seen.append(str(refused.value) + json.dumps(refused.value.body))
    with pytest.raises(anthropic.APIStatusError) as refused_a:
        anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0).messages.create(
            model="claude-refused",
            max_tokens=9,
            messages=user(),  # type: ignore[arg-type]
        )
    seen.append(str(refused_a.value) + json.dumps(refused_a.value.body))
    assert "[redacted]" in seen[-1]

    # upstreams failing mid-stream with the key in their message: in-band errors, redacted
    r = record(
        httpx.post(
            url + "/api/chat",
            json={
                "messages": [{"id": "1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
                "model": "gpt-failing",
            },
            headers=BEARER,
        )
    )
    assert '"type":"error"' in r.text and "over quota" in r.text
    r = record(
        httpx.post(
            url + "/v1/messages",
            json={"model": "claude-failing", "max_tokens": 9, "messages": user(), "stream": True},
            headers={"x-api-key": CLIENT_KEY},
        )
    )
    assert "event: error" in r.text and "over quota" in r.text
    with connect(
        url.replace("http://", "ws://") + "/ws/chat",
        subprotocols=["sluiceway", f"sluiceway.key.{CLIENT_KEY}"],
    ) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"message": "hi", "model": "claude-failing"}))
        frames = []
        while not frames or frames[-1].get("type") not in ("error", "done"):
            frames.append(json.loads(ws.recv(timeout=10)))
        seen.append(json.dumps(frames))
        assert frames[-1]["type"] == "error"
    with connect(url.replace("http://", "ws://") + "/ws/chat") as ws:
        ws.send(json.dumps({"type": "auth", "key": CLIENT_KEY}))
        ws.send(json.dumps({"message": "hi", "model": "gpt-refused"}))
        frame = json.loads(ws.recv(timeout=10))
        seen.append(json.dumps(frame))

    # clients with wrong keys
    for headers in ({"Authorization": f"Bearer {WRONG_CLIENT_KEY}"}, {"x-api-key": WRONG_CLIENT_KEY}):
        r = record(httpx.post(url + "/v1/chat/completions", json={"messages": user()}, headers=headers))
        assert r.status_code == 401

    assert leaked("\n".join(seen)) == []
    assert leaked(raw.text()) == [], "sluiceway logged a key by itself"

    # keys that reach a log line from outside: a provider's bug, a key in a query string
    r = record(
        httpx.post(url + "/v1/chat/completions", json={"model": "buggy", "messages": user()}, headers=BEARER)
    )
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "internal error in the model provider"
    assert "Traceback" not in r.text and "RuntimeError" not in r.text
    r = record(httpx.get(url + f"/v1/models?api_key={WRONG_CLIENT_KEY}", headers=BEARER))
    # the filter has work to do (the request log line is written as the response ends: wait for it)
    deadline = time.monotonic() + 10
    while not (BUGGY_KEY in raw.text() and WRONG_CLIENT_KEY in raw.text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert BUGGY_KEY in raw.text() and WRONG_CLIENT_KEY in raw.text()
    assert "RuntimeError: could not authenticate with [redacted]" in served.text()

    assert leaked("\n".join(seen)) == []
    assert leaked(served.text()) == []
    assert len(served.lines) > 20  # the capture did see the session
