"""Fixtures shared by the server tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.streams.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides that choose the stream backend (a test using it runs once with each)."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_srv")
    return {"redis_url": server.url}
