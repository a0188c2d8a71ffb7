"""The Redis log beyond the contract every log keeps (test_log.py): waits longer than the client's
socket timeout, Redis going away under a reader and a writer, and an owner that vanished."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
import redis
import redis.asyncio as aioredis

from sluiceway.errors import StoreUnavailableError
from sluiceway.events import ErrorEvent, Finish, TextDelta, Usage
from sluiceway.streams import redis_log
from sluiceway.streams.log import Batch
from sluiceway.streams.redis_log import RedisStreamLog
from tests.streams.redis_server import RedisServer, redis_server

META = {"owner": "a", "model": "m"}


def flat(batches: list[Batch | None]) -> Batch:
    return [pair for batch in batches for pair in batch or ()]


async def test_a_reader_waits_longer_than_the_clients_socket_timeout(redis_srv: RedisServer) -> None:
    """A pause between tokens longer than the socket timeout (redis-py 8: 5 s by default) used to
    end the reader with a ``TimeoutError``: ``XREAD BLOCK`` waited for ``idle`` (or 5 s) at once."""
    client = aioredis.from_url(redis_srv.url, socket_timeout=1)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(client, stream_id, prefix="pause:", meta=META)
    reader = RedisStreamLog(client, stream_id, prefix="pause:")
    try:
        await writer.open()
        await writer.append(TextDelta("before "))

        async def read(idle: float | None) -> list[Batch | None]:
            async with asyncio.timeout(10):
                return [batch async for batch in reader.read(0, idle)]

        quiet, plain = asyncio.create_task(read(1.5)), asyncio.create_task(read(None))
        await asyncio.sleep(2.5)
        await writer.append(TextDelta("after"))
        await writer.append(Finish("stop"))
        for task in (quiet, plain):
            got = await task
            assert [event for _, event in flat(got)] == [
                TextDelta("before "),
                TextDelta("after"),
                Finish("stop"),
            ]
        assert None in await quiet  # a heartbeat for the quiet 1.5 s
    finally:
        await client.aclose()


async def test_redis_going_away_ends_readers_with_an_error_and_the_writer_once() -> None:
    """Redis stopped mid-stream: every reader gets a ``store_unavailable`` error and its end (numbered
    after the last event it got, so a resume continues there), not an exception that cuts the
    response; the writer raises once, then takes the generation's end without raising."""
    with redis_server() as server:
        client = aioredis.from_url(server.url)
        stream_id = secrets.token_hex(4)
        writer = RedisStreamLog(client, stream_id, prefix="down:", meta=META)
        other = RedisStreamLog(client, stream_id, prefix="down:")
        try:
            await writer.open()
            for text in ("one ", "two "):
                await writer.append(TextDelta(text))
            readers = [writer.read(0, idle=0.2), other.read(0, idle=0.2)]
            for reader in readers:
                assert [seq for seq, _ in await anext(reader) or ()] == [1, 2]
            admin = server.client()
            with contextlib.suppress(redis.ConnectionError):  # redis-py takes the hang-up as success
                admin.shutdown(nosave=True)
            admin.close()
            for reader in readers:
                async with asyncio.timeout(10):
                    rest = [batch async for batch in reader]
                (seq, error), (end_seq, end) = flat(rest)
                assert isinstance(error, ErrorEvent) and error.code == "store_unavailable"
                assert seq == end_seq == 2 and end == Finish("error")
            with pytest.raises(StoreUnavailableError):
                await writer.append(TextDelta("three"))
            assert await writer.append(Usage(1, 3)) == 4  # the generation's end: dropped, not raised
            await writer.append(Finish("error"))
            assert writer.finished
            async with asyncio.timeout(10):
                late = [batch async for batch in writer.read(2)]
            assert [event.code for _, event in flat(late) if isinstance(event, ErrorEvent)] == [
                "store_unavailable"
            ]
        finally:
            await client.aclose()


async def test_a_reader_elsewhere_gives_up_a_stream_whose_owner_vanished(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner was killed (or lost Redis) before logging the end: its readers used to get pings
    until the keys expired (``total_timeout_s + retention_s``, 20 minutes by default)."""
    monkeypatch.setattr(redis_log, "OWNER_GONE_S", 0.3)
    client = aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(client, stream_id, prefix="gone:", meta=META)
    reader = RedisStreamLog(client, stream_id, prefix="gone:", owner_channel="gone:control:nobody")
    try:
        await writer.open()
        await writer.append(TextDelta("one "))
        async with asyncio.timeout(10):
            got = [batch async for batch in reader.read(0, idle=0.1)]
        events = flat(got)
        assert [event for _, event in events[:1]] == [TextDelta("one ")]
        (seq, error), (_, end) = events[1:]
        assert isinstance(error, ErrorEvent) and error.code == "shutting_down" and error.retryable
        assert seq == 1 and end == Finish("error")
    finally:
        await client.aclose()


async def test_a_reader_elsewhere_waits_for_an_owner_that_is_still_subscribed(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_log, "OWNER_GONE_S", 0.2)
    client = aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    owner = client.pubsub()
    await owner.subscribe("live:control:a")
    writer = RedisStreamLog(client, stream_id, prefix="live:", meta=META)
    reader = RedisStreamLog(client, stream_id, prefix="live:", owner_channel="live:control:a")
    try:
        await writer.open()
        task = asyncio.create_task(asyncio.wait_for(_read_all(reader), 10))
        await asyncio.sleep(1.0)  # a slow first token: several status checks, the owner is there
        await writer.append(TextDelta("late"))
        await writer.append(Finish("stop"))
        assert [event for _, event in flat(await task)] == [TextDelta("late"), Finish("stop")]
    finally:
        await owner.aclose()
        await client.aclose()


async def _read_all(log: RedisStreamLog) -> list[Batch | None]:
    return [batch async for batch in log.read(0, idle=0.1)]


async def test_an_append_retried_after_it_had_landed_is_not_a_failure(redis_srv: RedisServer) -> None:
    """A transaction whose reply was lost with its connection is sent again by the client's retry;
    its ``XADD`` then finds its own entry there already. That is the event written, not a lost
    store (the stream used to end with ``store_unavailable``). Here the entry is put in first."""
    client = aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(client, stream_id, prefix="again:", meta=META)
    try:
        await writer.open()
        assert await writer.append(TextDelta("one ")) == 1
        await client.xadd(f"again:{stream_id}:log", {"e": "landed"}, id="0-2")  # as the first try did
        assert await writer.append(TextDelta("two ")) == 2
        assert await writer.append(TextDelta("three")) == 3
        assert await writer.append(Finish("stop")) == 4
        entries = await client.xrange(f"again:{stream_id}:log")
        assert [entry_id for entry_id, _ in entries] == [b"0-1", b"0-2", b"0-3", b"0-4"]
        assert (await client.hget(f"again:{stream_id}:meta", "status")) == b"finished"
    finally:
        await client.aclose()


async def test_an_append_refused_for_another_reason_still_fails(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(client, stream_id, prefix="wrong:", meta=META)
    try:
        await writer.open()
        await client.delete(f"wrong:{stream_id}:log")
        await client.set(f"wrong:{stream_id}:log", "not a stream")  # WRONGTYPE on the next XADD
        with pytest.raises(StoreUnavailableError):
            await writer.append(TextDelta("private words"))
        assert "WRONGTYPE" in caplog.text and "private words" not in caplog.text  # no answer text logged
    finally:
        await client.aclose()
