from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.live import LiveServer, live_server, make_settings


@pytest.fixture
def server() -> Iterator[LiveServer]:
    """A live server with ``echo`` as the default model."""
    with live_server(make_settings()) as live:
        yield live
