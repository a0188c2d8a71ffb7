from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluiceway.providers.base import ModelConfig
from tests.live import LiveServer, live_server, make_settings

CLI_MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-crawl": ModelConfig("echo-crawl", "echo", options={"delay_ms": 250}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3}),
}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One server for the module: echo, slow echoes, and an echo that fails after three words."""
    with live_server(make_settings(models=CLI_MODELS, disconnect_grace_s=0.2)) as server:
        yield server
