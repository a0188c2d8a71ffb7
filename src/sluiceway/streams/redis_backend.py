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
lost, and so is its generation - the readers then see the keys expire (``stream_not_found``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from typing import Any

from sluiceway.streams.backend import ControlHandler, RemoteStreamInfo
from sluiceway.streams.log import StreamLog
from sluiceway.streams.redis_log import RedisStreamLog, meta_key, name_key

logger = logging.getLogger("sluiceway.streams")


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

        self.url = url
        self.prefix = prefix
        self.retention_s = retention_s
        self.running_ttl_s = running_ttl_s
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.redis: Any = aioredis.from_url(url)
        self._listener: asyncio.Task[None] | None = None

    def _channel(self, instance: str) -> str:
        return f"{self.prefix}control:{instance}"

    def _readers(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:readers"

    async def start(self, on_control: ControlHandler) -> None:
        await self.redis.ping()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel(self.instance_id))
        self._listener = asyncio.create_task(self._listen(pubsub, on_control), name="sluiceway-redis-control")

    async def _listen(self, pubsub: Any, on_control: ControlHandler) -> None:
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except (OSError, ConnectionError) as exc:
                    logger.warning("redis control channel lost (%s); reconnecting", exc)
                    await asyncio.sleep(1)
                    continue
                if message is None or message.get("type") != "message":
                    continue
                try:
                    body = json.loads(message["data"])
                    on_control(str(body["op"]), str(body["stream"]))
                except (ValueError, KeyError, TypeError):
                    logger.warning("ignored a malformed control message: %r", message.get("data"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

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
        owner, model, status = await self.redis.hmget(
            meta_key(self.prefix, stream_id), "owner", "model", "status"
        )
        if owner is None:
            return None
        finished = status == b"finished"
        log = RedisStreamLog(self.redis, stream_id, prefix=self.prefix, finished=finished)
        return RemoteStreamInfo(log, owner.decode(), None if model is None else model.decode(), finished)

    async def resolve_key(self, key: str) -> str | None:
        value = await self.redis.get(name_key(self.prefix, key))
        return None if value is None else str(value.decode())

    async def attach_remote(self, stream_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(self._readers(stream_id))
        pipe.expire(self._readers(stream_id), int(self.running_ttl_s + self.retention_s))
        await pipe.execute()

    async def detach_remote(self, stream_id: str, owner: str) -> None:
        left = await self.redis.decr(self._readers(stream_id))
        if left <= 0:
            await self._publish(owner, "idle", stream_id)

    async def remote_readers(self, stream_id: str) -> int:
        value = await self.redis.get(self._readers(stream_id))
        return max(0, int(value or 0))

    async def request_cancel(self, stream_id: str, owner: str, why: str) -> None:
        await self._publish(owner, "cancel", stream_id)

    async def _publish(self, owner: str, op: str, stream_id: str) -> None:
        await self.redis.publish(self._channel(owner), json.dumps({"op": op, "stream": stream_id}))

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()
