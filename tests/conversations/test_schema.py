from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sluiceway.conversations import SchemaTooNewError, database_url, open_store
from sluiceway.conversations.schema import MIGRATIONS, Migration, metadata, migrate, schema_version
from sluiceway.conversations.sql import make_engine


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    made = make_engine(database_url(url=database))
    yield made
    await made.dispose()


async def _version(engine: AsyncEngine) -> int | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(schema_version.c.version))


async def _migrate(engine: AsyncEngine, steps: tuple[Migration, ...]) -> int:
    async with engine.begin() as conn:
        return await conn.run_sync(migrate, steps)


def _create(name: str, log: list[str]) -> Migration:
    def step(conn: Connection) -> None:
        log.append(name)
        conn.execute(text(f"CREATE TABLE {name} (x INTEGER)"))

    return step


async def test_a_fresh_database_gets_every_step(engine: AsyncEngine) -> None:
    assert await _migrate(engine, MIGRATIONS) == len(MIGRATIONS)
    assert await _version(engine) == len(MIGRATIONS)


async def test_the_migrated_schema_is_the_one_the_code_uses(engine: AsyncEngine) -> None:
    await _migrate(engine, MIGRATIONS)

    def columns(conn: Connection) -> dict[str, set[str]]:
        found = inspect(conn)
        return {name: {c["name"] for c in found.get_columns(name)} for name in found.get_table_names()}

    async with engine.connect() as conn:
        actual = await conn.run_sync(columns)
    expected = {table.name: {c.name for c in table.columns} for table in metadata.sorted_tables}
    assert actual == expected


async def test_steps_run_once_each_in_order(engine: AsyncEngine) -> None:
    ran: list[str] = []
    first = (_create("t_one", ran), _create("t_two", ran))
    assert await _migrate(engine, first) == 2
    assert await _migrate(engine, first) == 2
    assert await _migrate(engine, (*first, _create("t_three", ran))) == 3
    assert ran == ["t_one", "t_two", "t_three"]


async def test_a_failing_step_leaves_the_database_as_it_was(engine: AsyncEngine) -> None:
    ran: list[str] = []

    def broken(conn: Connection) -> None:
        raise RuntimeError("step failed")

    await _migrate(engine, (_create("t_one", ran),))
    with pytest.raises(RuntimeError, match="step failed"):
        await _migrate(engine, (_create("t_one", ran), _create("t_two", ran), broken))
    assert await _version(engine) == 1
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert "t_two" not in tables  # the DDL of the failed run was rolled back with it


async def test_a_database_from_a_newer_sluiceway_is_refused(database: str, engine: AsyncEngine) -> None:
    await _migrate(engine, MIGRATIONS)
    async with engine.begin() as conn:
        await conn.execute(update(schema_version).values(version=len(MIGRATIONS) + 1))
    with pytest.raises(SchemaTooNewError, match="upgrade"):
        await open_store(database_url(url=database))


async def test_instances_starting_together_migrate_once(database: str) -> None:
    stores = await asyncio.gather(*(open_store(database_url(url=database)) for _ in range(4)))
    try:
        made = await stores[0].create("seen by all")
        for store in stores:
            assert (await store.get(made.id)).title == "seen by all"
    finally:
        for store in stores:
            await store.aclose()
