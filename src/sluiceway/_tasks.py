"""Stopping a task that may not stop at the first cancel.

Some libraries swallow a ``CancelledError`` now and then (redis-py 8 on Python 3.11 does, e.g. while
it reconnects), so one ``cancel()`` and an ``await`` can wait forever. :func:`stop_task` cancels
again every 50 ms until the task is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("sluiceway")


async def stop_task(task: asyncio.Task[Any], within: float | None = None) -> None:
    """Cancel ``task`` until it is done (for at most ``within`` seconds, if given; a warning says so
    when it did not stop). A failure it ends with is retrieved, not raised: what is being stopped
    (a disconnect listener, a backend's background task) has nothing more to report."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while not task.done() and (deadline is None or loop.time() < deadline):
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.done():
        logger.warning("%s did not stop within %g s of cancelling", task.get_name(), within)
    elif not task.cancelled():
        task.exception()
