"""Waiting for a condition that nothing signals (a counter a provider bumps), under a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], object], within: float = 10.0) -> None:
    """Return once ``condition()`` is true; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - no event exists for these conditions; bounded above
            await asyncio.sleep(0.005)
