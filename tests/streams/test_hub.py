"""The hub: readers and the disconnect policies, Stop, keys, retention, limits and draining."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator

import pytest

from sluiceway.errors import OverloadedError, ShuttingDownError, StoreUnavailableError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta
from sluiceway.requests import ChatRequest, Message
from sluiceway.streams import generation
from sluiceway.streams.backend import MemoryBackend
from sluiceway.streams.hub import HubSettings, Retired, Stream, StreamHub
from sluiceway.streams.log import MemoryStreamLog, StreamLog
from sluiceway.streams.shutdown import ShutdownSignal
from tests.streams.polling import eventually
from tests.streams.providers import CountingProvider, Probe

WORDS = " ".join(f"w{i}" for i in range(40))


def ask(text: str = WORDS, model: str = "m") -> ChatRequest:
    return ChatRequest((Message("user", text),), model)


@pytest.fixture
async def hub() -> AsyncIterator[StreamHub]:
    hub = StreamHub(HubSettings(grace_s=0.2, retention_s=60))
    await hub.aopen()
    yield hub
    await hub.aclose()


async def read_events(stream: Stream, after: int = 0) -> list[Event]:
    async with asyncio.timeout(10):
        return [event async for batch in stream.read(after) for _, event in batch or ()]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_every_reader_of_a_stream_gets_every_event(hub: StreamHub) -> None:
    stream = hub.start(CountingProvider(Probe(), 5), ask())
    first, second = await asyncio.gather(read_events(stream), read_events(stream))
    assert text(first) == WORDS and first == second


async def test_the_last_reader_leaving_cancels_after_the_grace(hub: StreamHub) -> None:
    probe = Probe()
    stream = hub.start(CountingProvider(probe, 20), ask())
    reader = stream.read()
    await anext(reader)
    await reader.aclose()
    left = time.monotonic()
    await eventually(lambda: stream.finished)
    assert stream.cancelled_by == "disconnect" and probe.how == "cancelled"
    assert probe.stopped_at is not None and 0.15 < probe.stopped_at - left < 1.0
    events = await read_events(stream)
    assert isinstance(events[-1], Finish) and events[-1].reason == "cancelled"


async def test_a_reader_that_comes_back_within_the_grace_keeps_the_stream(hub: StreamHub) -> None:
    probe = Probe()
    stream = hub.start(CountingProvider(probe, 10), ask())
    reader = stream.read()
    await anext(reader)
    await reader.aclose()
    await asyncio.sleep(0.05)
    events = await read_events(stream)  # re-attached before the 0.2 s grace ran out
    assert text(events) == WORDS and probe.how == "finished" and stream.cancelled_by is None


async def test_policy_finish_keeps_generating_without_readers(hub: StreamHub) -> None:
    probe = Probe()
    stream = hub.start(CountingProvider(probe, 5), ask(), policy="finish")
    reader = stream.read()
    await anext(reader)
    await reader.aclose()
    await eventually(lambda: stream.finished)
    assert probe.how == "finished" and text(await read_events(stream)) == WORDS


class BurstProvider:
    """``count`` deltas without a pause, as when one upstream read holds many tokens."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(self.count):
            yield TextDelta(f"t{i} ")
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


async def test_the_rest_of_a_burst_waits_until_the_first_text_is_sent(
    hub: StreamHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "FIRST_SEND_WAIT_S", 30.0)  # no timing in the assertions below
    stream = hub.start(BurstProvider(50), ask())
    reader = stream.read()
    async with asyncio.timeout(10):
        first = await anext(reader)
    assert first is not None and [e for _, e in first] == [TextDelta("t0 ")]
    for _ in range(20):  # the response is sending the first text: other tasks run meanwhile
        await asyncio.sleep(0)
    assert stream.log.last_seq == first[-1][0] and not stream.first_sent.is_set()
    async with asyncio.timeout(10):
        rest = [event async for batch in reader for _, event in batch or ()]
    assert stream.first_sent.is_set()
    assert text(rest) == "".join(f"t{i} " for i in range(1, 50))
    assert isinstance(rest[-1], Finish) and rest[-1].reason == "stop"


async def test_without_a_reader_a_burst_goes_on_after_a_short_wait(hub: StreamHub) -> None:
    stream = hub.start(BurstProvider(50), ask(), policy="finish")
    await eventually(lambda: stream.finished, within=5)
    assert text(await read_events(stream)) == "".join(f"t{i} " for i in range(50))


async def test_generations_and_their_readers_share_the_hubs_alarms(hub: StreamHub) -> None:
    streams = [hub.start(CountingProvider(Probe(), 30), ask("a b c d")) for _ in range(3)]
    readers = [stream.read(idle=5) for stream in streams]
    async with asyncio.timeout(10):
        for reader in readers:
            await anext(reader)
    assert len(hub.alarms) == 6  # each generation's deadline and each reader's heartbeat clock
    async with asyncio.timeout(10):
        for reader in readers:
            async for _ in reader:
                pass
    assert all(stream.finished for stream in streams)
    assert len(hub.alarms) == 0 and hub.alarms._heap == []


class FailingLog(MemoryStreamLog):
    """A log whose store goes away after ``good`` appends (as Redis can)."""

    def __init__(self, stream_id: str, good: int) -> None:
        super().__init__(stream_id)
        self.good = good

    async def append(self, event: Event) -> int:
        if self.good <= 0:
            raise StoreUnavailableError("the stream store is unavailable")
        self.good -= 1
        return await super().append(event)


class FailingBackend(MemoryBackend):
    def create_log(self, stream_id: str, *, key: str | None, model: str, max_bytes: int) -> StreamLog:
        return FailingLog(stream_id, good=2)


async def test_a_log_failing_as_the_generation_ends_is_logged_not_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = StreamHub(HubSettings(retention_s=0.01), FailingBackend())
    await hub.aopen()
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
    stream = hub.start(CountingProvider(Probe(), 1), ask())
    assert stream.task is not None
    await asyncio.wait({stream.task}, timeout=10)
    assert stream.task.done() and not stream.task.cancelled()
    stream_id = stream.stream_id
    del stream
    await eventually(lambda: hub.get(stream_id) is None)  # forgotten: the task goes with the stream
    gc.collect()
    await hub.aclose()
    asyncio.get_running_loop().set_exception_handler(None)
    assert reported == []  # no "Task exception was never retrieved"
    assert "could not log its end: store_unavailable" in caplog.text


async def test_a_per_stream_grace_overrides_the_server_one(hub: StreamHub) -> None:
    stream = hub.start(CountingProvider(Probe(), 20), ask(), grace_s=0)
    reader = stream.read()
    await anext(reader)
    await reader.aclose()
    await eventually(lambda: stream.finished, within=0.5)


async def test_stop_cancels_at_once_with_the_usage_so_far(hub: StreamHub) -> None:
    probe = Probe()
    stream = hub.start(CountingProvider(probe, 10), ask())
    await eventually(lambda: len(probe.produced) >= 3)
    stream.cancel()
    events = await read_events(stream)
    assert stream.cancelled_by == "stop" and probe.how == "cancelled"
    usage = [e for e in events if not isinstance(e, TextDelta)][-2]
    assert usage.output_tokens == len(probe.produced)  # type: ignore[union-attr]


async def test_a_stream_cancelled_before_it_ever_ran_still_ends(hub: StreamHub) -> None:
    probe = Probe()
    stream = hub.start(CountingProvider(probe, 10), ask())
    stream.cancel()
    events = await read_events(stream)
    assert isinstance(events[-1], Finish) and events[-1].reason == "cancelled" and probe.started == 0


async def test_a_key_finds_the_newest_stream_started_with_it(hub: StreamHub) -> None:
    first = hub.start(CountingProvider(Probe(), 1), ask("a"), key="chat:1")
    second = hub.start(CountingProvider(Probe(), 1), ask("b"), key="chat:1")
    assert await hub.find("chat:1") is second and first is not second
    assert await hub.find("chat:2") is None
    assert await hub.lookup(second.stream_id) is second and await hub.lookup("nope") is None


async def test_finished_streams_are_forgotten_after_the_retention() -> None:
    hub = StreamHub(HubSettings(retention_s=0.1))
    stream = hub.start(CountingProvider(Probe(), 0), ask("a"), key="k")
    await read_events(stream)
    assert hub.get(stream.stream_id) is stream
    await eventually(lambda: hub.get(stream.stream_id) is None)
    assert await hub.find("k") is None
    await hub.aclose()


async def test_a_retired_stream_reads_back_as_it_ran_and_is_forgotten_at_the_retention() -> None:
    """After ``retire_after_s`` a finished stream is kept as plain data; what a client can ask of
    it (events from any point, the end, the meter, the key) is unchanged."""
    hub = StreamHub(HubSettings(retention_s=0.6, retire_after_s=0.05))
    stream = hub.start(CountingProvider(Probe(), 0), ask("one two three"), key="k")
    events = await read_events(stream)
    ttft, tokens = stream.meter.first_token, stream.meter.usage_so_far()
    await eventually(lambda: hub.get(stream.stream_id) is not stream)
    again = hub.get(stream.stream_id)
    assert again is not None and again.finished and again.stream_id == stream.stream_id
    assert await read_events(again) == events
    assert await read_events(again, 2) == events[2:]
    assert (again.meter.first_token, again.meter.usage_so_far()) == (ttft, tokens)
    found = await hub.find("k")
    assert found is not None and found.stream_id == stream.stream_id
    again.cancel("stop")  # a finished stream: nothing happens
    await eventually(lambda: hub.get(stream.stream_id) is None)
    assert await hub.find("k") is None
    await hub.aclose()


async def test_a_stream_being_read_is_retired_only_once_its_reader_has_left() -> None:
    hub = StreamHub(HubSettings(retention_s=5, retire_after_s=0.05))
    stream = hub.start(CountingProvider(Probe(), 0), ask("one two"))
    reader = stream.read()
    await anext(reader)
    await asyncio.sleep(0.2)
    assert hub.get(stream.stream_id) is stream  # its reader is still attached
    await reader.aclose()
    await eventually(lambda: hub.get(stream.stream_id) is not stream)
    await hub.aclose()


async def test_retired_streams_leave_the_garbage_collector_little_to_walk() -> None:
    async def tracked_per_finished_stream(retire_after_s: float) -> float:
        hub = StreamHub(HubSettings(retention_s=60, retire_after_s=retire_after_s))
        gc.collect()
        before = len(gc.get_objects())
        ids = []
        for _ in range(200):
            stream = hub.start(CountingProvider(Probe(), 0), ask(WORDS))
            await read_events(stream)
            ids.append(stream.stream_id)
        del stream
        if retire_after_s < 60:
            await eventually(lambda: all(isinstance(hub._streams[i], Retired) for i in ids))
        gc.collect()
        per_stream = (len(gc.get_objects()) - before) / 200
        await hub.aclose()
        return per_stream

    kept, retired = await tracked_per_finished_stream(60), await tracked_per_finished_stream(0.01)
    assert kept > 15 and retired < 3, (kept, retired)  # about 23 against 2


async def test_beyond_the_limits_a_start_is_refused_before_anything_runs() -> None:
    hub = StreamHub(HubSettings(max_concurrent=2, max_concurrent_per_model=1))
    probes = [Probe() for _ in range(3)]
    first = hub.start(CountingProvider(probes[0], 10), ask(model="a"))
    with pytest.raises(OverloadedError) as refused:
        hub.start(CountingProvider(probes[1], 10), ask(model="a"))
    assert refused.value.retry_after and refused.value.status == 429
    hub.start(CountingProvider(probes[1], 10), ask(model="b"))
    with pytest.raises(OverloadedError):
        hub.start(CountingProvider(probes[2], 10), ask(model="c"))
    assert probes[2].started == 0 and hub.active == 2
    first.cancel()
    await eventually(lambda: hub.active == 1)
    hub.start(CountingProvider(probes[2], 10), ask(model="c"))
    await hub.aclose()


async def test_drain_lets_short_streams_finish_and_ends_the_rest_with_shutting_down() -> None:
    hub = StreamHub()
    short = hub.start(CountingProvider(Probe(), 5), ask("a b c"))
    long = hub.start(CountingProvider(Probe(), 50), ask())
    drained = hub.begin_drain(0.3)
    with pytest.raises(ShuttingDownError):
        hub.start(CountingProvider(Probe(), 5), ask())
    await asyncio.wait_for(drained, 5)
    short_events, long_events = await read_events(short), await read_events(long)
    assert isinstance(short_events[-1], Finish) and short_events[-1].reason == "stop"
    errors = [e for e in long_events if isinstance(e, ErrorEvent)]
    assert [e.code for e in errors] == ["shutting_down"] and text(long_events)
    await hub.aclose()


async def test_a_shutdown_signal_from_another_thread_starts_the_drain() -> None:
    hub = StreamHub()
    signal = ShutdownSignal()
    hub.drain_on(signal, 0.05)
    stream = hub.start(CountingProvider(Probe(), 50), ask())
    threading.Thread(target=signal.trigger).start()
    await eventually(lambda: stream.finished)
    assert hub.closing and stream.cancelled_by == "shutdown"
    await hub.aclose()


async def test_closing_the_hub_ends_every_generation() -> None:
    hub = StreamHub()
    streams = [hub.start(CountingProvider(Probe(), 50), ask()) for _ in range(3)]
    await asyncio.wait_for(hub.aclose(), 5)
    assert all(s.finished for s in streams) and hub.active == 0


def test_streams_that_finish_while_a_past_due_sweep_waits_raise_nothing_under_uvloop() -> None:
    """uvloop's ``call_at`` for a time already past returns a plain ``Handle`` (no ``when()``):
    with ``retention_s = 0`` every finished stream's expiry is due at once, and each stream that
    finished before that sweep ran made the hub's done-callback raise."""
    import uvloop

    async def main() -> tuple[list[dict[str, object]], int]:
        errors: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        hub = StreamHub(HubSettings(retention_s=0.0, grace_s=0.2))
        streams = [hub.start(BurstProvider(3), ask()) for _ in range(20)]
        read = await asyncio.gather(*(read_events(stream) for stream in streams))  # they end together
        assert all(text(events) == "t0 t1 t2 " for events in read)
        await eventually(lambda: all(hub.get(s.stream_id) is None for s in streams))
        await hub.aclose()
        return errors, len(streams)

    errors, count = uvloop.run(main())
    assert count == 20 and errors == []
