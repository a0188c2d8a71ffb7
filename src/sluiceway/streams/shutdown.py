"""A "start shutting down" signal that a signal handler or another thread may raise.

The server (``sluiceway serve``) triggers it when SIGTERM arrives, before uvicorn starts waiting for
open connections; the hub awaits it and drains. No lock: :meth:`trigger` sets the flag before it
reads the waiters and :meth:`wait` registers before it reads the flag, so neither can miss the other
(a signal handler interrupting :meth:`wait` in the same thread included).
"""

from __future__ import annotations

import asyncio
import contextlib


class ShutdownSignal:
    """Set once; wakes every waiter on its own event loop."""

    def __init__(self) -> None:
        self._triggered = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def triggered(self) -> bool:
        """Whether shutdown has begun."""
        return self._triggered

    def trigger(self) -> None:
        """Begin shutdown (safe from any thread and from signal handlers)."""
        self._triggered = True
        for loop, event in list(self._waiters):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        """Return once :meth:`trigger` was called."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        self._waiters.append(entry)
        try:
            if not self._triggered:
                await event.wait()
        finally:
            self._waiters.remove(entry)
