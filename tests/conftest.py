from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conversations.postgres import PostgresServer, postgres_server
from tests.live import LiveServer, live_server, make_settings
from tests.streams.redis_server import RedisServer, redis_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the run (skipped when not installed, failed under CI=true)."""
    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """One real redis-server for the run (skipped when not installed, failed under CI=true)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def server() -> Iterator[LiveServer]:
    """A live server with ``echo`` as the default model."""
    with live_server(make_settings()) as live:
        yield live
