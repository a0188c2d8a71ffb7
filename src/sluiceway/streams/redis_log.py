"""A stream log in a Redis stream, readable by every process that shares the Redis.

Layout, for stream ``ID`` under ``prefix`` (default ``sluiceway:``)::

    {prefix}{ID}:log      the events: XADD with explicit entry ids 0-<seq>, field "e" = codec JSON
    {prefix}{ID}:meta     hash: owner, model, status (running|finished), first, last, key

Entry ids are the sequence numbers themselves, so "the events after seq N" is ``XREAD ... 0-N`` and
no mapping is stored anywhere. One process writes (the one running the generation); any process
reads. The byte bound works as in memory: the writer remembers each event's size and trims with
``XTRIM MINID`` past ``max_bytes``; a reader whose next entry id skips ahead fell behind and gets
the same lagged end. While running, keys live for ``running_ttl_s`` (a crashed writer does not leak
them forever); once finished, for ``retention_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from sluiceway.errors import StreamNotFoundError
from sluiceway.events import Event, Finish
from sluiceway.streams.codec import dump_event, event_size, load_event
from sluiceway.streams.log import Batch, lagged_batch

READ_COUNT = 256
POLL_S = 5.0


def log_key(prefix: str, stream_id: str) -> str:
    """The Redis stream holding the events."""
    return f"{prefix}{stream_id}:log"


def meta_key(prefix: str, stream_id: str) -> str:
    """The hash describing the stream."""
    return f"{prefix}{stream_id}:meta"


def name_key(prefix: str, key: str) -> str:
    """The string naming the newest stream started with ``key``."""
    return f"{prefix}key:{key}"


class RedisStreamLog:
    """One stream's log in Redis: the writer's handle (in the owning process) or a reader's."""

    def __init__(
        self,
        redis: Any,
        stream_id: str,
        *,
        prefix: str = "sluiceway:",
        max_bytes: int = 8 * 1024 * 1024,
        meta: dict[str, str] | None = None,
        key: str | None = None,
        running_ttl_s: float = 1800.0,
        retention_s: float = 600.0,
        finished: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.max_bytes = max_bytes
        self._redis = redis
        self._prefix = prefix
        self._log = log_key(prefix, stream_id)
        self._meta_key = meta_key(prefix, stream_id)
        self._meta = meta or {}
        self._writer = meta is not None
        self._key = key
        self._running_ttl = max(1, int(running_ttl_s))
        self._retention = max(1, int(retention_s))
        self._finished = finished
        self._opened = False
        self._seq = 0
        self._sizes: deque[int] = deque()
        self._first = 1
        self._bytes = 0

    @property
    def finished(self) -> bool:
        return self._finished

    async def open(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._open_into(pipe)
        await pipe.execute()

    def _open_into(self, pipe: Any) -> None:
        self._opened = True
        pipe.hset(self._meta_key, mapping={**self._meta, "status": "running", "first": 1})
        pipe.expire(self._meta_key, self._running_ttl)
        if self._key is not None:
            pipe.set(
                name_key(self._prefix, self._key), self.stream_id, ex=self._running_ttl + self._retention
            )

    async def append(self, event: Event) -> int:
        if self._finished:
            raise RuntimeError(f"stream {self.stream_id} already finished")
        self._seq += 1
        seq = self._seq
        pipe = self._redis.pipeline(transaction=True)
        if not self._opened:
            self._open_into(pipe)
        pipe.xadd(self._log, {"e": dump_event(event)}, id=f"0-{seq}")
        if seq == 1:
            pipe.expire(self._log, self._running_ttl)
        self._account(event, pipe)
        if isinstance(event, Finish):
            self._finished = True
            pipe.hset(self._meta_key, mapping={"status": "finished", "last": seq})
            for name in (self._log, self._meta_key):
                pipe.expire(name, self._retention)
        await pipe.execute()
        return seq

    async def logged_seq(self) -> int | None:
        """The writer knows; a reader asks Redis for the newest entry (trimming always keeps it, so a
        client cannot have seen a later one). ``None`` when the log holds no entry: not yet written,
        or expired, which a reader cannot tell apart."""
        if self._writer:
            return self._seq
        newest = await self._redis.xrevrange(self._log, count=1)
        return _seq_of(newest[0][0]) if newest else None

    def _account(self, event: Event, pipe: Any) -> None:
        size = event_size(event)
        self._sizes.append(size)
        self._bytes += size
        if self._bytes <= self.max_bytes:
            return
        while self._bytes > self.max_bytes and len(self._sizes) > 1:
            self._bytes -= self._sizes.popleft()
            self._first += 1
        pipe.xtrim(self._log, minid=f"0-{self._first}", approximate=False)
        pipe.hset(self._meta_key, "first", self._first)

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        pos = max(after, 0)
        status = await self._status(pos)
        if status == "gone":
            raise StreamNotFoundError(f"stream {self.stream_id} is not retained any more")
        if status == "done":
            return
        block_ms = max(1, int((idle if idle is not None else POLL_S) * 1000))
        while True:
            reply = await self._redis.xread({self._log: f"0-{pos}"}, count=READ_COUNT, block=block_ms)
            if not reply:
                if idle is not None:
                    yield None
                status = await self._status(pos)
                if status == "gone":
                    yield _gone_batch(self.stream_id, pos)
                if status != "running":
                    return
                continue
            batch: Batch = []
            for entry_id, fields in reply[0][1]:
                seq = _seq_of(entry_id)
                if seq > pos + 1:
                    if batch:
                        yield batch
                    yield lagged_batch(self.stream_id, pos, seq)
                    return
                event = load_event(fields[b"e"])
                batch.append((seq, event))
                pos = seq
                if isinstance(event, Finish):
                    self._finished = True
                    break
            yield batch
            if self._finished and isinstance(batch[-1][1], Finish):
                return

    async def _status(self, pos: int) -> str:
        """``running``; ``done`` when nothing will follow ``pos``; ``gone`` once no longer retained."""
        if self._writer:  # this process writes the log: it knows, and its meta may not exist yet
            return "done" if self._finished and pos >= self._seq else "running"
        status, last = await self._redis.hmget(self._meta_key, "status", "last")
        if status is None:
            return "gone"
        if status == b"finished":
            self._finished = True
            if last is not None and pos >= int(last):
                return "done"
        return "running"


def _gone_batch(stream_id: str, pos: int) -> Batch:
    error = StreamNotFoundError(f"stream {stream_id} is not retained any more").to_event()
    return [(pos, error), (pos, Finish("error"))]


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])
