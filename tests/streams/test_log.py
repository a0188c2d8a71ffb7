"""The stream log contract, for the memory log and the Redis log alike (a real redis-server)."""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis.asyncio as aioredis

from sluiceway.errors import StreamNotFoundError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.streams.codec import EVENT_OVERHEAD, event_size
from sluiceway.streams.log import BATCH_BYTES, Batch, MemoryStreamLog, StreamLog
from sluiceway.streams.redis_log import RedisStreamLog
from tests.streams.polling import eventually
from tests.streams.redis_server import RedisServer

MakeLog = Callable[..., StreamLog]


@pytest.fixture(params=["memory", "redis"])
async def make_log(request: pytest.FixtureRequest) -> AsyncIterator[MakeLog]:
    """A factory of empty writer logs: ``make_log(max_bytes=...)``."""
    if request.param == "memory":
        yield lambda max_bytes=1 << 30: MemoryStreamLog(secrets.token_hex(4), max_bytes)
        return
    server: RedisServer = request.getfixturevalue("redis_srv")
    client = aioredis.from_url(server.url)
    prefix = f"test-{secrets.token_hex(3)}:"

    def make(max_bytes: int = 1 << 30) -> StreamLog:
        meta = {"owner": "test", "model": "m"}
        return RedisStreamLog(client, secrets.token_hex(4), prefix=prefix, max_bytes=max_bytes, meta=meta)

    yield make
    await client.aclose()


def words(n: int) -> list[Event]:
    return [Usage(3, 0), *[TextDelta(f"w{i} ") for i in range(n)], Usage(3, n), Finish("stop")]


async def fill(log: StreamLog, events: Sequence[Event]) -> list[int]:
    await log.open()
    return [await log.append(event) for event in events]


async def read_all(log: StreamLog, after: int = 0, idle: float | None = None) -> list[Batch | None]:
    batches: list[Batch | None] = []
    async with asyncio.timeout(10):
        async for batch in log.read(after, idle):
            batches.append(batch)
    return batches


def flat(batches: list[Batch | None]) -> Batch:
    return [item for batch in batches for item in batch or ()]


async def test_appends_number_events_from_one(make_log: MakeLog) -> None:
    log = make_log()
    assert await fill(log, words(3)) == [1, 2, 3, 4, 5, 6]
    assert log.finished


async def test_a_reader_gets_exactly_the_events_after_any_seq(make_log: MakeLog) -> None:
    log = make_log()
    events = words(5)
    await fill(log, events)
    for after in range(len(events) + 1):
        got = flat(await read_all(log, after))
        assert got == [(seq, events[seq - 1]) for seq in range(after + 1, len(events) + 1)]


async def test_a_reader_ends_at_once_when_nothing_follows_the_finish(make_log: MakeLog) -> None:
    log = make_log()
    await fill(log, words(1))
    assert await read_all(log, after=4) == []


async def test_a_live_reader_gets_the_tail_in_order_as_it_is_written(make_log: MakeLog) -> None:
    log = make_log()
    await log.open()
    events = words(20)
    got: list[Batch | None] = []

    async def reader() -> None:
        got.extend(await read_all(log))

    task = asyncio.create_task(reader())
    for event in events:
        await log.append(event)
        await asyncio.sleep(0.001)
    await asyncio.wait_for(task, 10)
    assert [event for _, event in flat(got)] == events
    assert [seq for seq, _ in flat(got)] == list(range(1, len(events) + 1))


async def test_quiet_readers_get_none_to_send_heartbeats(make_log: MakeLog) -> None:
    log = make_log()
    await log.open()
    await log.append(TextDelta("a"))
    got: list[Batch | None] = []

    async def reader() -> None:
        async for batch in log.read(0, idle=0.05):
            got.append(batch)

    task = asyncio.create_task(reader())
    await eventually(lambda: got.count(None) >= 2)
    await log.append(Finish("stop"))
    await asyncio.wait_for(task, 10)
    assert flat(got) == [(1, TextDelta("a")), (2, Finish("stop"))]


async def test_no_heartbeat_while_events_keep_coming_then_one_after_a_quiet_spell(make_log: MakeLog) -> None:
    log = make_log()
    await log.open()
    got: list[tuple[float, Batch | None]] = []

    async def reader() -> None:
        async for batch in log.read(0, idle=0.15):
            got.append((time.monotonic(), batch))

    task = asyncio.create_task(reader())
    for i in range(20):  # 0.4 s of events 20 ms apart: more than two idle periods, never quiet
        await log.append(TextDelta(str(i)))
        await asyncio.sleep(0.02)
    busy_until = time.monotonic()
    await eventually(lambda: any(batch is None for _, batch in got))
    await log.append(Finish("stop"))
    await asyncio.wait_for(task, 10)
    beats = [at for at, batch in got if batch is None]
    assert beats and min(beats) >= busy_until  # the first heartbeat only after the events stopped
    assert [event for _, event in flat([b for _, b in got])][-1] == Finish("stop")


async def test_cancelling_a_waiting_reader_with_heartbeats_ends_it(make_log: MakeLog) -> None:
    log = make_log()
    await log.open()
    task = asyncio.create_task(read_all(log, 0, idle=0.01))
    await asyncio.sleep(0.05)  # a few heartbeats in
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def test_the_bound_drops_the_oldest_events_and_lagging_readers_get_an_error(make_log: MakeLog) -> None:
    log = make_log(max_bytes=10 * (EVENT_OVERHEAD + 4))
    events = [TextDelta(f"{i:04d}") for i in range(1, 41)] + [Finish("stop")]
    await fill(log, events)
    batches = await read_all(log, after=0)
    (lag_seq, error), (finish_seq, finish) = flat(batches)
    assert isinstance(error, ErrorEvent) and error.code == "reader_lagged" and error.retryable
    assert finish == Finish("error") and lag_seq == finish_seq
    tail = flat(await read_all(log, after=lag_seq))  # resuming after the error continues, with a gap
    assert tail[0][0] == lag_seq + 1 and tail[-1] == (41, Finish("stop"))
    assert [event for _, event in tail] == events[lag_seq:]
    assert len(tail) <= 10


async def test_a_reader_that_falls_behind_while_reading_is_ended_with_the_lag_error(
    make_log: MakeLog,
) -> None:
    log = make_log(max_bytes=5 * (EVENT_OVERHEAD + 1))
    await log.open()
    await log.append(TextDelta("a"))
    reader = log.read(0)
    first = await anext(reader)
    assert first == [(1, TextDelta("a"))]
    for _ in range(20):  # the reader holds its position while these push it out of the log
        await log.append(TextDelta("b"))
    batch = await asyncio.wait_for(anext(reader), 10)
    assert batch is not None and isinstance(batch[0][1], ErrorEvent) and batch[0][1].code == "reader_lagged"
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(reader), 10)


async def test_the_memory_log_holds_no_more_than_its_bound() -> None:
    log = MemoryStreamLog("s", max_bytes=64 * 1024)
    for _ in range(10_000):
        log.append_nowait(TextDelta("x" * 100))
    assert log.held_bytes <= 64 * 1024
    assert log.last_seq == 10_000 and log.first_seq > 9_000


async def test_memory_batches_are_bounded_so_a_slow_reader_holds_little() -> None:
    log = MemoryStreamLog("s")
    events = [TextDelta("x" * 1000) for _ in range(500)] + [Finish("stop")]
    for event in events:
        log.append_nowait(event)
    batches = await read_all(log)
    assert len(batches) > 1
    for batch in batches:
        assert batch is not None
        assert sum(len(e.text) for _, e in batch if isinstance(e, TextDelta)) <= BATCH_BYTES + 1000
    assert [event for _, event in flat(batches)] == events


async def test_appending_after_the_finish_is_a_bug(make_log: MakeLog) -> None:
    log = make_log()
    await fill(log, [Finish("stop")])
    with pytest.raises(RuntimeError):
        await log.append(TextDelta("late"))


async def test_logged_seq_is_the_newest_event_even_after_trimming(make_log: MakeLog) -> None:
    log = make_log(max_bytes=EVENT_OVERHEAD * 4 + 40)
    assert await log.logged_seq() == 0
    seqs = await fill(log, words(20))
    assert await log.logged_seq() == seqs[-1] == 23


async def test_a_redis_reader_knows_the_newest_entry_once_there_is_one(redis_srv: RedisServer) -> None:
    client = aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(client, stream_id, prefix="x:", meta={"owner": "a", "model": "m"}, max_bytes=400)
    reader = RedisStreamLog(client, stream_id, prefix="x:")
    try:
        await writer.open()
        assert await reader.logged_seq() is None  # nothing written, or expired: it cannot tell
        await fill(writer, words(20))
        assert await reader.logged_seq() == 23  # trimmed from the front, never the newest
    finally:
        await client.aclose()


async def test_a_redis_reader_in_another_process_sees_the_writer(redis_srv: RedisServer) -> None:
    writer_client, reader_client = aioredis.from_url(redis_srv.url), aioredis.from_url(redis_srv.url)
    stream_id = secrets.token_hex(4)
    writer = RedisStreamLog(writer_client, stream_id, prefix="x:", meta={"owner": "a", "model": "m"})
    reader = RedisStreamLog(reader_client, stream_id, prefix="x:")
    events = words(3)
    try:
        await writer.open()
        await writer.append(events[0])
        task = asyncio.create_task(read_all(reader, after=0, idle=0.05))
        for event in events[1:]:
            await writer.append(event)
        got = await asyncio.wait_for(task, 10)
        assert [event for _, event in flat(got)] == events
        assert reader.finished
        with pytest.raises(StreamNotFoundError):
            await read_all(RedisStreamLog(reader_client, "missing", prefix="x:"))
    finally:
        await writer_client.aclose()
        await reader_client.aclose()


async def test_redis_keys_expire_after_retention_once_finished(redis_srv: RedisServer) -> None:
    client = aioredis.from_url(redis_srv.url)
    log = RedisStreamLog(
        client, "ttl", prefix="ttl:", meta={"owner": "a"}, key="k", running_ttl_s=100, retention_s=7
    )
    try:
        await fill(log, [TextDelta("a")])
        assert 90 < await client.ttl("ttl:ttl:log") <= 100
        await log.append(Finish("stop"))
        assert 0 < await client.ttl("ttl:ttl:log") <= 7
        assert 0 < await client.ttl("ttl:ttl:meta") <= 7
        assert await client.get("ttl:key:k") == b"ttl"
    finally:
        await client.delete("ttl:ttl:log", "ttl:ttl:meta", "ttl:key:k")
        await client.aclose()


async def test_memory_log_holds_texts_out_of_the_collectors_reach() -> None:
    """A retained log holds every token of its stream: as plain strings, which the garbage
    collector does not track, so full collections do not walk them; they read back as deltas."""
    import gc

    log = MemoryStreamLog("s1")
    texts = [f"tok{i} " for i in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    for text in texts:
        log.append_nowait(TextDelta(text))
    log.append_nowait(Finish("stop"))
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # not one tracked object per token
    assert log.events[:3] == [TextDelta("tok0 "), TextDelta("tok1 "), TextDelta("tok2 ")]
    read = [event async for batch in log.read(4990) for _, event in batch or ()]
    assert read == [*(TextDelta(t) for t in texts[4990:]), Finish("stop")]


async def test_a_finished_memory_log_reads_back_every_event_it_held() -> None:
    """Compacted at its finish, the log still gives every held event, in order, from any point."""
    tail: list[Event] = [
        TextDelta("é🙂"),
        TextDelta(""),
        TextDelta("x" * 300),
        ErrorEvent("upstream_error", "it broke"),
        Usage(3, 5),
        Finish("error"),
    ]
    log = MemoryStreamLog("s1", max_bytes=EVENT_OVERHEAD * 6 + 310)  # the first events are dropped
    for event in [Usage(1, 1), *(TextDelta(f"t{i}") for i in range(20)), *tail]:
        log.append_nowait(event)
    assert log.finished
    assert log.events == tail
    first = log.first_seq
    assert log.last_seq == first + len(tail) - 1
    for after in range(first - 1, log.last_seq + 1):
        read = [pair async for batch in log.read(after) for pair in batch or ()]
        assert read == [(first + i, event) for i, event in enumerate(tail)][after - first + 1 :]
    lagged = [pair async for batch in log.read(first - 2) for pair in batch or ()]
    assert lagged[0][1].code == "reader_lagged"  # type: ignore[union-attr]


async def test_a_text_read_by_the_only_reader_is_held_as_its_text_alone() -> None:
    log = MemoryStreamLog("s1")
    log.append_nowait(Usage(1, 0))
    deltas = [TextDelta(f"zr{i}") for i in range(20)]
    for delta in deltas:
        log.append_nowait(delta)
    size = log.held_bytes
    reader = log.read(0)
    batch = await anext(reader)
    assert [event for _, event in batch or ()] == [Usage(1, 0), *deltas]
    assert all(a is b for (_, a), b in zip((batch or [])[1:], deltas, strict=True))  # the very objects
    log.append_nowait(TextDelta("zr20"))
    assert await anext(reader) == [(22, TextDelta("zr20"))]  # the first batch was handed on
    del batch, deltas, delta
    gc.collect()
    held = [o.text for o in gc.get_objects() if isinstance(o, TextDelta) and o.text.startswith("zr")]
    assert held == ["zr20"]  # the one not handed on yet
    again = [pair async for pair in _first_batch(log.read(0))]  # a second reader: rebuilt deltas
    assert again == [(1, Usage(1, 0)), *((2 + i, TextDelta(f"zr{i}")) for i in range(21))]
    assert log.held_bytes == size + event_size(TextDelta("zr20"))
    await reader.aclose()


async def _first_batch(reader: AsyncIterator[Batch | None]) -> AsyncIterator[tuple[int, Event]]:
    for pair in await anext(reader) or ():
        yield pair


async def test_a_reader_behind_at_the_finish_gets_the_appended_objects_then_the_log_compacts() -> None:
    log = MemoryStreamLog("s1")
    deltas = [TextDelta(f"zq{i}") for i in range(50)]
    log.append_nowait(Usage(1, 0))
    reader = log.read(0)
    first = await anext(reader)  # attached; what follows is appended before it reads again
    for delta in deltas:
        log.append_nowait(delta)
    log.append_nowait(Finish("stop"))
    assert log._done is None  # not compacted under a reader
    rest = [event async for batch in reader for _, event in batch or ()]
    assert [event for _, event in first or ()] == [Usage(1, 0)]
    assert all(a is b for a, b in zip(rest[:50], deltas, strict=True))  # not rebuilt copies
    assert rest[50:] == [Finish("stop")]
    assert log._done is not None  # the reader has left: compacted
    del deltas, rest, first, delta
    gc.collect()
    assert not any(isinstance(o, TextDelta) and o.text.startswith("zq") for o in gc.get_objects())
    assert [e.text for e in log.events[1:3] if isinstance(e, TextDelta)] == ["zq0", "zq1"]


async def test_a_finished_log_retires_and_comes_back_the_same_even_while_read() -> None:
    log = MemoryStreamLog("s1", max_bytes=EVENT_OVERHEAD * 5 + 10)  # the first events are dropped
    log.append_nowait(Usage(1, 1))
    reader = log.read(0)
    await anext(reader)
    for event in [*(TextDelta(f"t{i}") for i in range(8)), Usage(1, 8), Finish("stop")]:
        log.append_nowait(event)
    record = log.retire()  # a reader is still attached: not compacted yet
    assert record is not None
    again = MemoryStreamLog.from_retired(record)
    assert (again.first_seq, again.last_seq, again.events) == (log.first_seq, log.last_seq, log.events)
    await reader.aclose()
    assert MemoryStreamLog.from_retired(log.retire() or record).events == log.events


async def test_a_compacted_or_retired_log_batches_as_the_running_log_did() -> None:
    """The compact form keeps no sizes: it derives them from the texts, so batches (bounded by
    ``BATCH_BYTES``) have the same boundaries before and after the finish, and after retirement."""
    events: list[Event] = [Usage(2, 0)]
    events += [TextDelta("é" * (i * 37 % 900)) for i in range(400)]
    events += [ErrorEvent("upstream_error", "x" * 5000), Usage(2, 400), Finish("error")]
    running = MemoryStreamLog("s1")
    running.append_nowait(events[0])
    reader = running.read(0)
    await anext(reader)  # attached: the log stays uncompacted until this reader leaves
    for event in events[1:]:
        running.append_nowait(event)
    before = [[seq for seq, _ in batch or ()] async for batch in running.read(0)]
    await reader.aclose()  # now the log compacts
    after = [[seq for seq, _ in batch or ()] async for batch in running.read(0)]
    record = running.retire()
    assert record is not None
    retired = MemoryStreamLog.from_retired(record)
    again = [[seq for seq, _ in batch or ()] async for batch in retired.read(0)]
    assert len(before) > 3 and before == after == again
    assert retired.events == events and retired.held_bytes == running.held_bytes


async def test_a_reader_keeping_up_with_a_bounded_log_reads_every_text_across_its_compactions() -> None:
    log = MemoryStreamLog("s1", max_bytes=8 * (EVENT_OVERHEAD + 4))  # about eight tokens held
    reader = log.read(0)
    texts: list[str] = []
    for i in range(300):  # the list drops its head past 64 dropped events, more than once
        log.append_nowait(TextDelta(f"t{i:03}"))
        if i % 3 == 2:  # the reader comes back every third token
            texts += [e.text for _, e in await anext(reader) or () if isinstance(e, TextDelta)]
    assert texts == [f"t{i:03}" for i in range(300)]
    held = log._events[log._start :]
    assert held and all(isinstance(h, str) for h in held[:-3])  # passed ones: their texts alone
    assert log.events == [TextDelta(f"t{i:03}") for i in range(300 - len(held), 300)]
    await reader.aclose()
