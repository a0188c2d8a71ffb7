"""Where stream logs live, and how the processes sharing them talk to each other.

The hub keeps the streams it runs itself; a backend adds everything that crosses processes: logs
other processes can read (``open_remote``), names for streams (``resolve_key``), readers attached
elsewhere (``attach_remote``/``detach_remote``/``remote_readers``) and control messages to the
process that runs a stream (``request_cancel``; "the last remote reader left" is sent by
``detach_remote``). The memory backend is one process: nothing is remote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sluiceway.streams.log import MemoryStreamLog, StreamLog

ControlHandler = Callable[[str, str], None]
"""Called with ``(op, stream_id)`` for each control message to this process: ``cancel`` or ``idle``."""


@dataclass(frozen=True, slots=True)
class RemoteStreamInfo:
    """A stream some other process runs: a reader's log of it and what its metadata said."""

    log: StreamLog
    owner: str
    model: str | None
    finished: bool


class StreamBackend(Protocol):
    """Stream logs and cross-process coordination behind one seam (memory or Redis)."""

    instance_id: str

    async def start(self, on_control: ControlHandler) -> None:
        """Connect and begin delivering control messages for streams this process runs."""
        ...

    def create_log(self, stream_id: str, *, key: str | None, model: str, max_bytes: int) -> StreamLog:
        """The log a new generation of this process writes (``key`` names it for :meth:`resolve_key`)."""
        ...

    async def open_remote(self, stream_id: str) -> RemoteStreamInfo | None:
        """A stream this process does not run, if the backend knows it."""
        ...

    async def resolve_key(self, key: str) -> str | None:
        """The newest stream id started with ``key``, if any is retained."""
        ...

    async def attach_remote(self, stream_id: str) -> None:
        """Count a reader of a stream another process runs."""
        ...

    async def detach_remote(self, stream_id: str, owner: str) -> None:
        """Uncount that reader; tell ``owner`` when it was the last."""
        ...

    async def remote_readers(self, stream_id: str) -> int:
        """Readers other processes hold on a stream this process runs."""
        ...

    async def request_cancel(self, stream_id: str, owner: str, why: str) -> None:
        """Ask ``owner`` to cancel a stream it runs."""
        ...

    async def aclose(self) -> None:
        """Flush and disconnect."""
        ...


class MemoryBackend:
    """One process, logs in memory: nothing is ever remote."""

    instance_id = "memory"

    async def start(self, on_control: ControlHandler) -> None:
        return None

    def create_log(self, stream_id: str, *, key: str | None, model: str, max_bytes: int) -> StreamLog:
        return MemoryStreamLog(stream_id, max_bytes)

    async def open_remote(self, stream_id: str) -> RemoteStreamInfo | None:
        return None

    async def resolve_key(self, key: str) -> str | None:
        return None

    async def attach_remote(self, stream_id: str) -> None:
        return None

    async def detach_remote(self, stream_id: str, owner: str) -> None:
        return None

    async def remote_readers(self, stream_id: str) -> int:
        return 0

    async def request_cancel(self, stream_id: str, owner: str, why: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
