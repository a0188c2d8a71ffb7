"""Per-stream event logs: one writer (the generation), any number of readers.

A reader asks for the events after a sequence number and gets them in batches: everything already
logged at once (so a reader that fell behind catches up in one write), then each new batch as it
arrives. ``None`` from :meth:`MemoryStreamLog.read` means "nothing new for ``idle`` seconds" so the
response can send a heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from sluiceway.events import Event, Finish

Batch = list[tuple[int, Event]]


class StreamLog(Protocol):
    """An append-only event log with resumable readers."""

    stream_id: str

    @property
    def finished(self) -> bool:
        """Whether the terminal ``Finish`` has been appended."""
        ...

    async def append(self, event: Event) -> int:
        """Append one event; return its sequence number (1-based)."""
        ...

    def read(self, after: int = 0, idle: float | None = None) -> AsyncIterator[Batch | None]:
        """Yield batches of ``(seq, event)`` after ``after``; ``None`` after ``idle`` quiet seconds."""
        ...


class MemoryStreamLog:
    """The in-process log: a list and a wake-up event replaced on every append."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.events: list[Event] = []
        self._finished = False
        self._wake = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._finished

    async def append(self, event: Event) -> int:
        return self.append_nowait(event)

    def append_nowait(self, event: Event) -> int:
        """Append without awaiting (the memory log never blocks)."""
        if self._finished:
            raise RuntimeError(f"stream {self.stream_id} already finished")
        self.events.append(event)
        if isinstance(event, Finish):
            self._finished = True
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
        return len(self.events)

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncIterator[Batch | None]:
        pos = max(after, 0)
        while True:
            if pos < len(self.events):
                end = len(self.events)
                batch = [(seq, self.events[seq - 1]) for seq in range(pos + 1, end + 1)]
                pos = end
                yield batch
                continue
            if self._finished:
                return
            wake = self._wake
            try:
                await asyncio.wait_for(wake.wait(), idle)
            except TimeoutError:
                yield None
