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

How a reader waits: ``XREAD BLOCK`` for at most :data:`BLOCK_S` at a time, whatever ``idle`` is, so
that a wait never outlasts the client's socket timeout (redis-py 8 defaults to 5 s; a longer block
failed as a ``TimeoutError``); ``None`` is yielded once ``idle`` seconds have passed without an
event. Between blocks a reader of another process's stream checks the stream's status and that its
owner is still subscribed to its control channel: an owner gone for :data:`OWNER_GONE_S` (killed,
or cut off from Redis) will never end the stream, so the reader gets an error end instead of pings
until the keys expire.

When Redis fails (down, unreachable, refusing writes): a reader gets a ``store_unavailable`` error
and its end, numbered after the last event it got (so a resume continues there); the writer raises
:class:`~sluiceway.errors.StoreUnavailableError` once, which ends the generation, and drops what is
appended after it (the end the generation then logs).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from redis.exceptions import RedisError, ResponseError

from sluiceway.errors import ShuttingDownError, StoreUnavailableError, StreamNotFoundError
from sluiceway.events import Event, Finish
from sluiceway.streams.codec import dump_event, event_size, load_event
from sluiceway.streams.log import Batch, lagged_batch

logger = logging.getLogger("sluiceway.streams")

READ_COUNT = 256
POLL_S = 5.0
"""How often a reader without ``idle`` looks at the stream's status while nothing arrives."""
BLOCK_S = 2.0
"""The longest single ``XREAD BLOCK``: below redis-py 8's default socket timeout (5 s), and at most
half of the client's own ``socket_timeout`` when it sets one."""
OWNER_GONE_S = 3.0
"""How long the owner of a running stream may be missing from its control channel (a reconnect
takes about a second) before its readers elsewhere give the stream up."""
UNAVAILABLE = "the stream store (Redis) is unavailable; try again"
"""What a request or a reader is told when Redis fails (``store_unavailable``)."""
REDIS_FAILURES = (RedisError, OSError)
"""What a failing Redis raises (redis-py's errors are not ``OSError``s)."""


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
        owner_channel: str | None = None,
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
        self._failed = False  # the writer could not write: nothing more reaches Redis
        self._owner_channel = owner_channel  # a reader's: the owner's control channel, to see it live
        self._owner_missing_since: float | None = None
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
        await self._execute(pipe, None)

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
        if self._failed:  # the log is lost (its readers were told): the generation's end goes nowhere
            self._finished = isinstance(event, Finish)
            return seq
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
        await self._execute(pipe, event)
        return seq

    async def _execute(self, pipe: Any, event: Event | None) -> None:
        """Run the writer's commands; on a Redis failure mark the log lost and raise
        ``StoreUnavailableError`` (except for the ``Finish``: nothing follows it anyway)."""
        try:
            await pipe.execute()
        except REDIS_FAILURES as exc:
            if await self._landed(exc, event):
                return
            self._failed = True
            reason = str(exc).rpartition("caused error: ")[2]  # not the command: it holds the text
            logger.warning(
                "stream %s: writing its log to Redis failed (%s); ending it", self.stream_id, reason
            )
            if not isinstance(event, Finish):
                raise StoreUnavailableError(UNAVAILABLE) from exc

    async def _landed(self, error: Exception, event: Event | None) -> bool:
        """Whether ``error`` only says the entry is there already: the client retries a command on a
        lost connection (a Redis restart), and a transaction whose reply was lost had run. As this
        process is the log's only writer, an entry with this number is this event; the rest of the
        transaction ran again (expiries, the finish) and did no harm."""
        if event is None or not isinstance(error, ResponseError) or "equal or smaller" not in str(error):
            return False
        try:
            entry = await self._redis.xrange(self._log, f"0-{self._seq}", f"0-{self._seq}")
        except REDIS_FAILURES:
            return False
        return bool(entry)

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
        try:
            status = await self._status(pos)
        except REDIS_FAILURES:
            status = "failed"
        if status == "gone":
            raise StreamNotFoundError(f"stream {self.stream_id} is not retained any more")
        if status == "done":
            return
        wait_s = idle if idle is not None else POLL_S
        block_ms = max(1, int(min(wait_s, _longest_block(self._redis)) * 1000))
        quiet_since = time.monotonic()
        while status == "running":
            quiet = False
            try:
                reply = await self._redis.xread({self._log: f"0-{pos}"}, count=READ_COUNT, block=block_ms)
                if not reply:
                    quiet = time.monotonic() - quiet_since >= wait_s - 0.001
                    status = await self._status(pos, ask=quiet or self._owner_missing_since is not None)
            except REDIS_FAILURES:
                reply, status = None, "failed"
            if quiet:
                quiet_since = time.monotonic()
                if idle is not None:
                    yield None
            if not reply:
                continue
            quiet_since = time.monotonic()
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
        end = _END_BATCHES.get(status)
        if end is not None:
            yield end(self.stream_id, pos)

    async def _status(self, pos: int, *, ask: bool = True) -> str:
        """``running``; ``done`` when nothing will follow ``pos``; ``gone`` once no longer retained;
        ``failed`` when this process could not write it; ``orphaned`` when the owner of a running
        stream has left its control channel. A reader asks Redis only when ``ask`` is true."""
        if self._writer:  # this process writes the log: it knows, and its meta may not exist yet
            if self._failed:
                return "failed"
            return "done" if self._finished and pos >= self._seq else "running"
        if not ask:
            return "running"
        status, last = await self._redis.hmget(self._meta_key, "status", "last")
        if status is None:
            return "gone"
        if status == b"finished":
            self._finished = True
            if last is not None and pos >= int(last):
                return "done"
            return "running"
        return "orphaned" if await self._owner_gone() else "running"

    async def _owner_gone(self) -> bool:
        """Whether the owner has been missing from its control channel for :data:`OWNER_GONE_S`
        (then the stream's status is read once more: it may have ended as its owner left)."""
        if self._owner_channel is None:
            return False
        ((_, subscribers),) = await self._redis.pubsub_numsub(self._owner_channel)
        now = time.monotonic()
        if subscribers:
            self._owner_missing_since = None
            return False
        if self._owner_missing_since is None:
            self._owner_missing_since = now
        if now - self._owner_missing_since < OWNER_GONE_S:
            return False
        status: bytes | None = await self._redis.hget(self._meta_key, "status")
        return status == b"running"


def _longest_block(redis: Any) -> float:
    """:data:`BLOCK_S`, or half the client's socket timeout if that is shorter."""
    pool = getattr(redis, "connection_pool", None)
    timeout = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
    return min(BLOCK_S, timeout / 2) if isinstance(timeout, int | float) and timeout > 0 else BLOCK_S


def _gone_batch(stream_id: str, pos: int) -> Batch:
    error = StreamNotFoundError(f"stream {stream_id} is not retained any more").to_event()
    return [(pos, error), (pos, Finish("error"))]


def _unavailable_batch(stream_id: str, pos: int) -> Batch:
    """The end of a reader that cannot reach Redis (numbered so that a resume continues at ``pos``)."""
    error = StoreUnavailableError(UNAVAILABLE).to_event()
    return [(pos, error), (pos, Finish("error"))]


def _orphaned_batch(stream_id: str, pos: int) -> Batch:
    """The end of a reader whose stream's owner went away without ending it."""
    error = ShuttingDownError(
        f"the instance generating stream {stream_id} stopped without ending it; ask again"
    ).to_event()
    return [(pos, error), (pos, Finish("error"))]


_END_BATCHES = {
    "gone": _gone_batch,
    "failed": _unavailable_batch,
    "orphaned": _orphaned_batch,
}


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])
