"""The Redis backend: stream logs in Redis Streams, coordination by counters and pub/sub.

Every process sharing one Redis (N uvicorn workers, N instances behind a load balancer) can read,
resume and fan out every stream; only the process that runs a generation writes its log. What
crosses processes besides the log::

    {prefix}{ID}:reader-instances  hash: readers attached in other processes, per process (HINCRBY)
    {prefix}key:{KEY}              stream id started with KEY (e.g. aisdk:<chat id>)
    {prefix}control:{INSTANCE}     pub/sub channel of one process: {"op": "cancel"|"idle", "stream": ID}

When a process's last reader of a stream detaches it publishes ``idle`` to the owner, whose grace
timer then counts the remote readers before cancelling. ``POST .../cancel`` on any process
publishes ``cancel`` to the owner. Pub/sub is fire-and-forget: a message to a process that died is
lost, and so is its generation - its readers elsewhere see that it has left its control channel
and end with an error (:mod:`sluiceway.streams.redis_log`). A process that loses its connection
to Redis subscribes again as soon as Redis answers (messages sent meanwhile are lost).

A reading process that dies (SIGKILL, out of memory) never uncounts its readers nor says ``idle``.
So readers are counted per process, and the owner counts only the processes still subscribed to
their control channel (one ``PUBSUB NUMSUB`` for all of them), after :data:`READER_GONE_S` of
grace for one that is reconnecting. And while a stream the owner no longer reads itself is kept
running only by readers elsewhere, the owner looks at them every :data:`WATCH_S` and, once none
counts, tells itself ``idle`` - the message the dead process could not send.

Redis failures are translated here, at the seam: what a request waits on (finding, attaching to a
stream) raises :class:`~sluiceway.errors.StoreUnavailableError` (503 ``store_unavailable``);
what is fire-and-forget (a cancel request) is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sluiceway._tasks import stop_task
from sluiceway.errors import StoreUnavailableError
from sluiceway.streams.backend import ControlHandler, RemoteStreamInfo
from sluiceway.streams.log import StreamLog
from sluiceway.streams.redis_log import REDIS_FAILURES, UNAVAILABLE, RedisStreamLog, meta_key, name_key

logger = logging.getLogger("sluiceway.streams")

SOCKET_TIMEOUT_S = 10.0
"""How long a Redis command may take before its connection counts as lost, unless the URL sets
``socket_timeout`` (redis-py's default changed from none to 5 s; readers block for less anyway)."""
RECONNECT_S = 1.0
"""Pause between attempts to subscribe again to the control channel after losing it."""
READER_GONE_S = 3.0
"""How long a process holding readers may be missing from its control channel (as seen by the
owner) before they stop counting. A process that lost its connection is missing for about
:data:`RECONNECT_S` while it subscribes again, and its readers go on reading meanwhile: counting
them out at once could cancel a stream someone is still reading. One missing for longer cannot
reach Redis, or is dead: its readers end either way (a reader that cannot reach Redis ends with
``store_unavailable``). The same tolerance as readers give a missing owner (``OWNER_GONE_S``)."""
RECHECK_S = 0.5
"""How often :meth:`RedisBackend.remote_readers` looks again at a missing process it tolerates."""
WATCH_S = 1.0
"""How often the owner counts the readers elsewhere of a stream that only they keep running."""


class RedisBackend:
    """Streams in the Redis at ``url``, shared with every process using the same ``prefix``."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sluiceway:",
        retention_s: float = 600.0,
        running_ttl_s: float = 1800.0,
        instance_id: str | None = None,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.url = url
        self.prefix = prefix
        self.retention_s = retention_s
        self.running_ttl_s = running_ttl_s
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # a pooled connection Redis closed (a restart) is reconnected and the command retried (at
        # most twice), not failed: from_url gives its connections no retry at all
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(RedisConnectionError,))
        self.redis: Any = aioredis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, retry=retry)
        self._listener: asyncio.Task[None] | None = None
        self._on_control: ControlHandler | None = None
        self._missing_since: dict[str, float] = {}  # process id -> first seen off its channel
        self._watched: set[str] = set()  # streams run here that only readers elsewhere keep going
        self._watcher: asyncio.Task[None] | None = None

    def _channel(self, instance: str) -> str:
        return f"{self.prefix}control:{instance}"

    def _readers(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:reader-instances"

    async def start(self, on_control: ControlHandler) -> None:
        self._on_control = on_control
        await self.redis.ping()
        pubsub = await self._subscribe()
        self._listener = asyncio.create_task(self._listen(pubsub, on_control), name="sluiceway-redis-control")

    async def _subscribe(self) -> Any:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel(self.instance_id))
        except BaseException:
            await _aclose(pubsub)
            raise
        return pubsub

    async def _listen(self, pubsub: Any, on_control: ControlHandler) -> None:
        """Deliver control messages; on a lost connection, subscribe again until Redis answers."""
        try:
            while True:
                if pubsub is None:
                    try:
                        pubsub = await self._subscribe()
                    except REDIS_FAILURES:
                        await asyncio.sleep(RECONNECT_S)
                        continue
                    logger.info("redis control channel subscribed again")
                try:
                    message = await pubsub.get_message(timeout=None)
                except REDIS_FAILURES as exc:
                    logger.warning("redis control channel lost (%s); reconnecting", exc)
                    await _aclose(pubsub)
                    pubsub = None
                    await asyncio.sleep(RECONNECT_S)
                    continue
                _deliver(message, on_control)
        finally:
            if pubsub is not None:
                await _aclose(pubsub)

    def create_log(self, stream_id: str, *, key: str | None, model: str, max_bytes: int) -> StreamLog:
        meta = {"owner": self.instance_id, "model": model}
        if key is not None:
            meta["key"] = key
        return RedisStreamLog(
            self.redis,
            stream_id,
            prefix=self.prefix,
            max_bytes=max_bytes,
            meta=meta,
            key=key,
            running_ttl_s=self.running_ttl_s,
            retention_s=self.retention_s,
        )

    async def open_remote(self, stream_id: str) -> RemoteStreamInfo | None:
        async with _unavailable():
            owner, model, status = await self.redis.hmget(
                meta_key(self.prefix, stream_id), "owner", "model", "status"
            )
        if owner is None:
            return None
        finished = status == b"finished"
        log = RedisStreamLog(
            self.redis,
            stream_id,
            prefix=self.prefix,
            finished=finished,
            owner_channel=self._channel(owner.decode()),
        )
        return RemoteStreamInfo(log, owner.decode(), None if model is None else model.decode(), finished)

    async def resolve_key(self, key: str) -> str | None:
        async with _unavailable():
            value = await self.redis.get(name_key(self.prefix, key))
        return None if value is None else str(value.decode())

    async def attach_remote(self, stream_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self._readers(stream_id), self.instance_id, 1)
        pipe.expire(self._readers(stream_id), int(self.running_ttl_s + self.retention_s))
        async with _unavailable():
            await pipe.execute()

    async def detach_remote(self, stream_id: str, owner: str) -> None:
        """Uncount this process's reader; its last one says ``idle`` to the owner (which counts the
        readers left elsewhere before it cancels anything)."""
        left = await self.redis.hincrby(self._readers(stream_id), self.instance_id, -1)
        if left <= 0:
            await self._publish(owner, "idle", stream_id)

    async def remote_readers(self, stream_id: str) -> int:
        """The readers of processes still subscribed to their control channel. One missing from it
        is waited for (re-checked every :data:`RECHECK_S`) until it has been missing for
        :data:`READER_GONE_S`, so the grace check that asks gets a final answer: at most a few
        seconds late, and only when a reading process has vanished. A stream left with readers
        elsewhere is watched from then on (:meth:`_watch_readers`)."""
        deadline = time.monotonic() + READER_GONE_S + RECHECK_S
        while True:
            ((counted, doubtful, _),) = await self._tally([stream_id])
            if not doubtful or time.monotonic() >= deadline:
                break
            await asyncio.sleep(RECHECK_S)
        if counted + doubtful:
            self._watch(stream_id)
        return counted + doubtful

    async def _tally(self, stream_ids: list[str]) -> list[tuple[int, int, bool]]:
        """For each stream: readers of subscribed processes, readers of processes missing for less
        than :data:`READER_GONE_S`, and whether it is still running (two round trips in all)."""
        pipe = self.redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.hgetall(self._readers(stream_id))
            pipe.hget(meta_key(self.prefix, stream_id), "status")
        replies = await pipe.execute()
        per_stream = [
            ({name.decode(): max(0, int(n)) for name, n in counts.items()}, status == b"running")
            for counts, status in zip(replies[::2], replies[1::2], strict=True)
        ]
        holding = {name for counts, _ in per_stream for name, n in counts.items() if n}
        present = await self._present(holding)
        tallies = []
        for counts, running in per_stream:
            counted = sum(n for name, n in counts.items() if present.get(name) == "yes")
            doubtful = sum(n for name, n in counts.items() if present.get(name) == "missing")
            tallies.append((counted, doubtful, running))
        return tallies

    async def _present(self, instances: set[str]) -> dict[str, str]:
        """``yes`` (subscribed), ``missing`` (not, for less than :data:`READER_GONE_S`) or ``gone``."""
        if not instances:
            return {}
        channels = {self._channel(name): name for name in instances}
        replies = await self.redis.pubsub_numsub(*channels)
        now = time.monotonic()
        present: dict[str, str] = {}
        for channel, subscribers in replies:
            name = channels[channel.decode() if isinstance(channel, bytes) else channel]
            if subscribers:
                self._missing_since.pop(name, None)
                present[name] = "yes"
                continue
            since = self._missing_since.setdefault(name, now)
            present[name] = "missing" if now - since < READER_GONE_S else "gone"
        self._forget_long_gone(now)
        return present

    def _forget_long_gone(self, now: float) -> None:
        """Processes missing for longer than any readers key lives need not be remembered."""
        horizon = now - (self.running_ttl_s + self.retention_s)
        for name in [name for name, since in self._missing_since.items() if since < horizon]:
            del self._missing_since[name]

    def _watch(self, stream_id: str) -> None:
        if self._on_control is None:  # not started: nobody to tell
            return
        self._watched.add(stream_id)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_readers(), name="sluiceway-redis-readers")

    async def _watch_readers(self) -> None:
        """Every :data:`WATCH_S`, count the readers elsewhere of the watched streams; tell this
        process ``idle`` for a running one where none counts any more (a reading process died
        without saying so), and stop watching it (or one that ended). Ends with nothing to watch."""
        failing = False
        while self._watched:
            await asyncio.sleep(WATCH_S)
            streams = sorted(self._watched)
            try:
                tallies = await self._tally(streams)
            except REDIS_FAILURES as exc:
                if not failing:
                    logger.warning("could not count the remote readers of running streams: %s", exc)
                failing = True
                continue
            failing = False
            for stream_id, (counted, doubtful, running) in zip(streams, tallies, strict=True):
                if running and counted + doubtful:
                    continue
                self._watched.discard(stream_id)
                if running and self._on_control is not None:
                    self._on_control("idle", stream_id)

    async def request_cancel(self, stream_id: str, owner: str, why: str) -> None:
        try:
            await self._publish(owner, "cancel", stream_id)
        except REDIS_FAILURES as exc:  # fire-and-forget: the caller waits for the end in the log
            logger.warning("could not ask %s to cancel stream %s: %s", owner, stream_id, exc)

    async def _publish(self, owner: str, op: str, stream_id: str) -> None:
        await self.redis.publish(self._channel(owner), json.dumps({"op": op, "stream": stream_id}))

    async def aclose(self) -> None:
        for task in (self._listener, self._watcher):
            if task is not None:
                await stop_task(task, within=5.0)  # redis-py may swallow a cancel while reconnecting
        await self.redis.aclose()


def _deliver(message: Any, on_control: ControlHandler) -> None:
    if message is None or message.get("type") != "message":
        return
    try:
        body = json.loads(message["data"])
        on_control(str(body["op"]), str(body["stream"]))
    except (ValueError, KeyError, TypeError):
        logger.warning("ignored a malformed control message: %r", message.get("data"))


async def _aclose(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()


@asynccontextmanager
async def _unavailable() -> AsyncIterator[None]:
    """Redis failures inside the block leave it as ``StoreUnavailableError`` (the cause is logged)."""
    try:
        yield
    except REDIS_FAILURES as exc:
        logger.warning("redis failed: %s", exc)
        raise StoreUnavailableError(UNAVAILABLE) from exc
