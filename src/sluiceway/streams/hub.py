"""Live streams by id: start a generation, attach readers, cancel, and forget after retention.

How disconnect differs from Stop: :meth:`Stream.cancel` (an explicit Stop) cancels at once. When
the last reader detaches, the stream's policy decides: ``cancel`` schedules a cancel after
``grace`` seconds (a reader that re-attaches in time, e.g. after a reload, calls it off);
``finish`` lets the generation run to its end. Finished streams stay readable for ``retention``
seconds, so a client can resume after the answer is complete.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, TypeAlias

from sluiceway.providers.base import Provider
from sluiceway.requests import ChatRequest
from sluiceway.streams.generation import Meter, run_generation
from sluiceway.streams.log import Batch, MemoryStreamLog

DisconnectPolicy: TypeAlias = Literal["cancel", "finish"]


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Lifecycle knobs shared by every stream of one server."""

    disconnect_policy: DisconnectPolicy = "cancel"
    grace_s: float = 5.0
    retention_s: float = 600.0


class Stream:
    """One generation: its log, its task and who is reading it."""

    def __init__(self, stream_id: str, log: MemoryStreamLog, policy: DisconnectPolicy, grace_s: float):
        self.stream_id = stream_id
        self.log = log
        self.policy = policy
        self.grace_s = grace_s
        self.meter = Meter()
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self.cancelled_by: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the generation has ended (its ``Finish`` is logged)."""
        return self.log.finished

    def cancel(self, why: str = "stop") -> None:
        """Stop the generation now (no-op once it finished)."""
        if self.task is not None and not self.task.done():
            self.cancelled_by = self.cancelled_by or why
            self.task.cancel()

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        """Read the log after ``after`` as a reader: attached while iterating, detached at the end."""
        self._attach()
        try:
            async for batch in self.log.read(after, idle):
                yield batch
        finally:
            self._detach()

    def _attach(self) -> None:
        self.readers += 1
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def _detach(self) -> None:
        self.readers -= 1
        if self.readers > 0 or self.finished or self.policy != "cancel":
            return
        if self.grace_s <= 0:
            self.cancel("disconnect")
        else:
            loop = asyncio.get_running_loop()
            self._grace_timer = loop.call_later(self.grace_s, self.cancel, "disconnect")


class StreamHub:
    """All streams of one server process, by id."""

    def __init__(self, settings: HubSettings | None = None) -> None:
        self.settings = settings or HubSettings()
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, provider: Provider, request: ChatRequest, *, policy: DisconnectPolicy | None = None
    ) -> Stream:
        """Start generating ``request`` in a task of its own and return the new stream."""
        stream_id = secrets.token_hex(8)
        stream = Stream(
            stream_id,
            MemoryStreamLog(stream_id),
            policy or self.settings.disconnect_policy,
            self.settings.grace_s,
        )
        self._streams[stream_id] = stream
        task = asyncio.create_task(run_generation(provider, request, stream.log, stream.meter))
        stream.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(stream_id, t))
        return stream

    def get(self, stream_id: str) -> Stream | None:
        """The live or retained stream with this id."""
        return self._streams.get(stream_id)

    @property
    def active(self) -> int:
        """Generations still running."""
        return len(self._tasks)

    def _finished(self, stream_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.retention_s, self._streams.pop, stream_id, None)

    async def aclose(self) -> None:
        """Cancel every running generation and wait for each to log its end."""
        for stream in list(self._streams.values()):
            stream.cancel("shutdown")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
