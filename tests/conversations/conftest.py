from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluiceway.conversations import SqlConversationStore, database_url, open_store
from tests.conversations.postgres import database_for


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database as a user would name it: SQLite in a temp dir, or real PostgreSQL."""
    return database_for(request, tmp_path)


@pytest.fixture
async def store(database: str) -> AsyncIterator[SqlConversationStore]:
    """An open, migrated store on each backend."""
    opened = await open_store(database_url(url=database))
    yield opened
    await opened.aclose()
