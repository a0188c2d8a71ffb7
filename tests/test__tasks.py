"""Stopping a task that swallows a cancel (as redis-py can while it reconnects)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sluiceway._tasks import stop_task


async def test_stopping_a_task_that_swallows_a_cancel_cancels_it_again() -> None:
    swallowed = 0

    async def stubborn() -> None:  # as redis-py can be while it reconnects
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await stop_task(task)
    assert task.cancelled() and swallowed == 1


async def test_stopping_a_task_that_never_stops_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    deaf_for_now = True

    async def deaf() -> None:
        while deaf_for_now:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    await stop_task(task, within=0.2)
    assert not task.done() and "did not stop within 0.2 s" in caplog.text
    deaf_for_now = False
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()
