"""The Redis backend's coordination when Redis or another process misbehaves: control messages
after a lost connection, a stale pooled connection, Redis errors at the seam, and readers held by a
process that died or is reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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


@dataclass
class Owner:
    """A started backend (what a stream's owner runs) and the control messages it got."""

    backend: RedisBackend
    got: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
async def owner(redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Owner]:
    """An owner with short tolerances: 0.5 s off its channel before a reading process is gone."""
    monkeypatch.setattr(redis_backend, "READER_GONE_S", 0.5)
    monkeypatch.setattr(redis_backend, "RECHECK_S", 0.05)
    monkeypatch.setattr(redis_backend, "WATCH_S", 0.1)
    found = Owner(RedisBackend(redis_srv.url, prefix=f"rd-{secrets.token_hex(3)}:"))
    await found.backend.start(lambda op, stream: found.got.append((op, stream)))
    try:
        yield found
    finally:
        await found.backend.aclose()


async def running_stream(owner: Owner) -> str:
    """A stream ``owner`` runs (its metadata says ``running``)."""
    stream_id = secrets.token_hex(4)
    await owner.backend.create_log(stream_id, key=None, model="m", max_bytes=1 << 20).open()
    return stream_id


async def reader_process(owner: Owner, instance_id: str, *, subscribed: bool) -> RedisBackend:
    """Another process sharing ``owner``'s Redis; ``subscribed`` as a started one is."""
    other = RedisBackend(owner.backend.url, prefix=owner.backend.prefix, instance_id=instance_id)
    if subscribed:
        await other.start(lambda op, stream: None)
    return other


async def test_readers_of_a_process_that_left_its_control_channel_stop_counting(owner: Owner) -> None:
    """A reading process killed mid-stream never uncounted its reader: the owner's grace check
    saw it forever, and the generation ran to ``total_timeout_s`` for nobody."""
    stream_id = await running_stream(owner)
    live = await reader_process(owner, "live-b", subscribed=True)
    dead = await reader_process(owner, "dead-c", subscribed=False)  # never subscribed: as if killed
    try:
        await live.attach_remote(stream_id)
        await dead.attach_remote(stream_id)
        await dead.attach_remote(stream_id)
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 1
        await live.aclose()  # gone without detaching, like a SIGKILL
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 0
    finally:
        await live.aclose()
        await dead.aclose()


async def test_readers_of_a_process_that_is_reconnecting_still_count(
    owner: Owner, redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process subscribes to its control channel again about ``RECONNECT_S`` after losing it;
    its readers go on meanwhile, so they must not be counted out (and their stream cancelled)."""
    monkeypatch.setattr(redis_backend, "RECONNECT_S", 0.2)
    stream_id = await running_stream(owner)
    other = await reader_process(owner, "reconnecting-b", subscribed=True)
    admin = redis_srv.client()
    try:
        await other.attach_remote(stream_id)
        admin.client_kill_filter(_type="pubsub")  # every process's control channel, the owner's too
        channel = f"{owner.backend.prefix}control:reconnecting-b"
        assert admin.pubsub_numsub(channel) == [(channel.encode(), 0)]
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 1
    finally:
        # closed only once both are subscribed again: cancelling a listener while it subscribes can
        # be swallowed by redis-py, and its aclose then waits for good
        channels = [f"{owner.backend.prefix}control:{b.instance_id}" for b in (owner.backend, other)]
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: all(n for _, n in admin.pubsub_numsub(*channels)))
        admin.close()
        await other.aclose()


async def test_the_owner_hears_idle_when_the_last_process_reading_elsewhere_dies(owner: Owner) -> None:
    """The grace check had seen a reader elsewhere and let the stream run; when that process died
    nobody said ``idle``, so the owner never checked again."""
    stream_id = await running_stream(owner)
    other = await reader_process(owner, "doomed-b", subscribed=True)
    try:
        await other.attach_remote(stream_id)
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 1
        await asyncio.sleep(0.3)  # watched: nothing is said while the reader is there
        assert owner.got == []
        await other.aclose()  # killed: no detach, no idle
        await eventually(lambda: owner.got == [("idle", stream_id)])
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 0
    finally:
        await other.aclose()


async def test_a_stream_that_ended_is_no_longer_watched(owner: Owner) -> None:
    stream_id = await running_stream(owner)
    other = await reader_process(owner, "late-b", subscribed=True)
    try:
        await other.attach_remote(stream_id)
        async with asyncio.timeout(10):
            assert await owner.backend.remote_readers(stream_id) == 1
        await owner.backend.redis.hset(f"{owner.backend.prefix}{stream_id}:meta", "status", "finished")
        await eventually(lambda: not owner.backend._watched)
        await other.aclose()
        await asyncio.sleep(1.0)  # past READER_GONE_S: a watch would have said idle by now
        assert owner.got == []
    finally:
        await other.aclose()
