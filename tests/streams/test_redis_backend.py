"""The Redis backend's coordination when Redis misbehaves: control messages after a lost
connection, a stale pooled connection, and Redis errors at the seam."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sluiceway.errors import StoreUnavailableError
from sluiceway.streams import redis_backend
from sluiceway.streams.redis_backend import RedisBackend
from tests.live import free_port
from tests.streams.polling import eventually
from tests.streams.redis_server import RedisServer


async def test_control_messages_arrive_after_the_connection_to_redis_was_lost(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener caught only the built-in ``ConnectionError``; redis-py raises its own, so the
    first lost connection ended it for good: Stop and "last reader left" from other instances
    were ignored until the process restarted."""
    monkeypatch.setattr(redis_backend, "RECONNECT_S", 0.05, raising=False)
    prefix = f"ctl-{secrets.token_hex(3)}:"
    owner, other = RedisBackend(redis_srv.url, prefix=prefix), RedisBackend(redis_srv.url, prefix=prefix)
    got: list[tuple[str, str]] = []
    await owner.start(lambda op, stream: got.append((op, stream)))
    await other.start(lambda op, stream: None)
    admin = redis_srv.client()
    try:
        await other.request_cancel("s1", owner.instance_id, "stop")
        await eventually(lambda: got == [("cancel", "s1")])
        admin.client_kill_filter(_type="pubsub")
        await other.request_cancel("s2", owner.instance_id, "stop")  # lost: nobody subscribed yet
        channel = f"{prefix}control:{owner.instance_id}"
        await eventually(lambda: admin.pubsub_numsub(channel) == [(channel.encode(), 1)])
        await other.request_cancel("s3", owner.instance_id, "stop")
        await eventually(lambda: ("cancel", "s3") in got)
        assert owner._listener is not None and not owner._listener.done()
    finally:
        admin.close()
        await owner.aclose()
        await other.aclose()


async def test_a_pooled_connection_redis_closed_is_reconnected_not_failed(redis_srv: RedisServer) -> None:
    """After a Redis restart the first command on each pooled connection used to fail ("Connection
    closed by server"), ending a new generation with ``store_unavailable``."""
    backend = RedisBackend(redis_srv.url, prefix=f"stale-{secrets.token_hex(3)}:")
    admin = redis_srv.client()
    try:
        await backend.redis.set(f"{backend.prefix}probe", "1")  # one connection, back in the pool
        admin.client_kill_filter(_type="normal", skipme=True)
        assert await backend.resolve_key("probe-missing") is None
    finally:
        admin.close()
        await backend.aclose()


async def test_redis_failures_leave_the_backend_as_store_unavailable() -> None:
    """Resuming or finding a stream while Redis is down was a 500 with a traceback; a Stop is
    fire-and-forget (the caller waits for the end in the log), so its failure is only logged."""
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for call in (
            backend.open_remote("s1"),
            backend.resolve_key("aisdk:c1"),
            backend.attach_remote("s1"),
        ):
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(call, 10)
        await asyncio.wait_for(backend.request_cancel("s1", "owner", "stop"), 10)
    finally:
        await backend.aclose()
