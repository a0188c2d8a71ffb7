from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluiceway.providers.base import ModelConfig
from tests.live import LiveServer, live_server, make_settings

LIMITED = {"fail_after": 0, "fail_code": "rate_limited"}
TEST_MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3}),
    "echo-limited": ModelConfig("echo-limited", "echo", options=LIMITED),
}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One server for the module: echo, a slow echo, and echoes that fail mid-stream or at once."""
    with live_server(make_settings(models=TEST_MODELS)) as server:
        yield server
