"""Local wire-exact upstreams for the SDK-backed providers: one server per module, reset per test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import pytest

from sluiceway.testing import AnthropicUpstream, OpenAIUpstream, Upstream, run_upstream

API_KEY = "sk-test-NEVER-SHOW-ME-0123456789abcdef"
KEY_ENV = "SLUICEWAY_TEST_UPSTREAM_KEY"

U = TypeVar("U", bound=Upstream)


@dataclass(frozen=True)
class Served(Generic[U]):
    """An upstream and the base URL it is served on."""

    upstream: U
    url: str


@pytest.fixture(autouse=True)
def upstream_key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    return API_KEY


@pytest.fixture(scope="module")
def openai_served() -> Iterator[Served[OpenAIUpstream]]:
    upstream = OpenAIUpstream()
    with run_upstream(upstream) as url:
        yield Served(upstream, url)


@pytest.fixture(scope="module")
def anthropic_served() -> Iterator[Served[AnthropicUpstream]]:
    upstream = AnthropicUpstream()
    with run_upstream(upstream) as url:
        yield Served(upstream, url)


@pytest.fixture
def openai_upstream(openai_served: Served[OpenAIUpstream]) -> OpenAIUpstream:
    openai_served.upstream.reset()
    return openai_served.upstream


@pytest.fixture
def anthropic_upstream(anthropic_served: Served[AnthropicUpstream]) -> AnthropicUpstream:
    anthropic_served.upstream.reset()
    return anthropic_served.upstream


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens (the port was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
