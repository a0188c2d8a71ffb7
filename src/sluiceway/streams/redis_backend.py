"""The Redis backend: stream logs in Redis Streams, coordination by counters and pub/sub.

Every process sharing one Redis (N uvicorn workers, N instances behind a load balancer) can read,
resume and fan out every stream; only the process that runs a generation writes its log. What
crosses processes besides the log::

    {prefix}{ID}:readers         readers attached in other processes (INCR/DECR)
    {prefix}key:{KEY}            stream id started with KEY (e.g. aisdk:<chat id>)
    {prefix}control:{INSTANCE}   pub/sub channel of one process: {"op": "cancel"|"idle", "stream": ID}

When a remote reader detaches and the counter drops to 0 it publishes ``idle`` to the owner, whose
grace timer then checks the counter again before cancelling. ``POST .../cancel`` on any process
publishes ``cancel`` to the owner. Pub/sub is fire-and-forget: a message to a process that died is
lost, and so is its generation - its readers elsewhere see that it has left its control channel
and end with an error (:mod:`sluiceway.streams.redis_log`). A process that loses its connection
to Redis subscribes again as soon as Redis answers (messages sent meanwhile are lost).

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sluiceway.errors import StoreUnavailableError
from sluiceway.streams.backend import ControlHandler, RemoteStreamInfo
from sluiceway.streams.log import StreamLog
from sluiceway.streams.redis_log import REDIS_FAILURES, RedisStreamLog, meta_key, name_key

logger = logging.getLogger("sluiceway.streams")

SOCKET_TIMEOUT_S = 10.0
"""How long a Redis command may take before its connection counts as lost, unless the URL sets
``socket_timeout`` (redis-py's default changed from none to 5 s; readers block for less anyway)."""
RECONNECT_S = 1.0
"""Pause between attempts to subscribe again to the control channel after losing it."""


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

    def _channel(self, instance: str) -> str:
        return f"{self.prefix}control:{instance}"

    def _readers(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:readers"

    async def start(self, on_control: ControlHandler) -> None:
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
        pipe.incr(self._readers(stream_id))
        pipe.expire(self._readers(stream_id), int(self.running_ttl_s + self.retention_s))
        async with _unavailable():
            await pipe.execute()

    async def detach_remote(self, stream_id: str, owner: str) -> None:
        left = await self.redis.decr(self._readers(stream_id))
        if left <= 0:
            await self._publish(owner, "idle", stream_id)

    async def remote_readers(self, stream_id: str) -> int:
        value = await self.redis.get(self._readers(stream_id))
        return max(0, int(value or 0))

    async def request_cancel(self, stream_id: str, owner: str, why: str) -> None:
        try:
            await self._publish(owner, "cancel", stream_id)
        except REDIS_FAILURES as exc:  # fire-and-forget: the caller waits for the end in the log
            logger.warning("could not ask %s to cancel stream %s: %s", owner, stream_id, exc)

    async def _publish(self, owner: str, op: str, stream_id: str) -> None:
        await self.redis.publish(self._channel(owner), json.dumps({"op": op, "stream": stream_id}))

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
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
        raise StoreUnavailableError("the stream store (Redis) is unavailable; try again") from exc
