"""Per-stream event logs: one writer (the generation), any number of readers.

A reader asks for the events after a sequence number and gets them in batches: everything already
logged (up to :data:`BATCH_BYTES` at a time, so a reader that fell behind catches up in few writes
while holding little memory), then each new batch as it arrives. ``None`` means "nothing new for
``idle`` seconds" so the response can send a heartbeat.

How the bound works: a log holds at most ``max_bytes`` (as :func:`~sluiceway.streams.codec.event_size`
counts them). Appending past it drops the oldest events; ``first_seq`` moves up. A reader whose next
event was dropped gets :func:`lagged_batch` - an error numbered ``first_seq - 1`` - and its read ends,
so a client that resumes after that id continues from the oldest event still held. Readers cost
nothing while they wait: they hold a position, never a copy of the log.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncGenerator, Sequence
from typing import NamedTuple, Protocol

from sluiceway.errors import ReaderLaggedError
from sluiceway.events import Event, Finish, TextDelta
from sluiceway.streams.alarms import DUE_WITHIN_S, Alarm, Alarms
from sluiceway.streams.codec import EVENT_OVERHEAD, dump_event, event_size, load_event

Batch = list[tuple[int, Event]]
BATCH_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


class StreamLog(Protocol):
    """An append-only, bounded event log with resumable readers."""

    stream_id: str

    @property
    def finished(self) -> bool:
        """Whether the terminal ``Finish`` has been appended (as far as this process knows)."""
        ...

    async def open(self) -> None:
        """Make the stream visible to readers elsewhere before its first event (may be a no-op)."""
        ...

    async def append(self, event: Event) -> int:
        """Append one event; return its sequence number (1-based)."""
        ...

    async def logged_seq(self) -> int | None:
        """The sequence number of the newest event logged (0 before the first), or ``None`` when this
        handle cannot tell; no reader can have seen an event past it (resume checks ``after`` with it)."""
        ...

    def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        """Yield batches of ``(seq, event)`` after ``after``; ``None`` after ``idle`` quiet seconds."""
        ...


def lagged_batch(stream_id: str, after: int, first_seq: int) -> Batch:
    """The end of a reader that wants event ``after + 1`` when the log starts at ``first_seq``."""
    error = ReaderLaggedError(
        f"this reader fell behind stream {stream_id}: events {after + 1}..{first_seq - 1} are no longer "
        f"held (max_stream_bytes); resume after event {first_seq - 1} to continue from the oldest one held"
    ).to_event()
    return [(first_seq - 1, error), (first_seq - 1, Finish("error"))]


class MemoryStreamLog:
    """The in-process log: a list with a moving start; readers wait on futures made when they wait.

    While the stream runs, readers get the very objects the generation appended; once the only
    reader attached has passed a text delta, the log holds its text alone (a ``str`` in the list:
    ≈ 70 bytes a token instead of ≈ 125 with its ``TextDelta`` and a size; 3-4 KB less per open
    stream of 64 tokens), and a later reader (a resume) gets a ``TextDelta`` made for its batch.
    Each event's size (``event_size``) follows from what is held, so none is kept. Once
    the stream has finished and no read is in progress, the log is compacted (:class:`_Finished`):
    it is kept for ``retention_s`` so that clients can resume, and as one object per token it cost
    ≈ 113 bytes a token (now ≈ 14) and made every full garbage collection walk each of them
    (millions, at the default retention; docs/benchmarks.md, "Garbage collection"). The hub later
    keeps it as plain data (:meth:`retire`).
    """

    def __init__(
        self, stream_id: str, max_bytes: int = DEFAULT_MAX_BYTES, alarms: Alarms | None = None
    ) -> None:
        self.stream_id = stream_id
        self.max_bytes = max_bytes
        self.alarms = alarms
        """Where readers' heartbeat clocks are set (a hub's, for all its streams; else each read's own)."""
        self._events: list[_Held] = []  # None: dropped by the bound, not yet compacted away
        self._done: _Finished | None = None  # the events, once compacted at the finish
        self._start = 0  # index in _events of the oldest event held
        self._first_seq = 1
        self._bytes = 0
        self._finished = False
        self._waiters: list[asyncio.Future[None]] = []  # readers waiting for the next append
        self._readers = 0  # reads in progress (the log is compacted once it is finished and none is)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def events(self) -> list[Event]:
        """The events still held, oldest first (all of them unless the bound dropped some)."""
        if self._done is not None:
            return self._done[self._start :]
        return [_event(held) for held in self._events[self._start :] if held is not None]

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest event still held."""
        return self._first_seq

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._first_seq + len(self._held()) - self._start - 1

    @property
    def held_bytes(self) -> int:
        """What the events held cost, as counted against ``max_bytes``."""
        return self._bytes

    async def open(self) -> None:
        return None

    async def append(self, event: Event) -> int:
        return self.append_nowait(event)

    async def logged_seq(self) -> int | None:
        return self.last_seq

    def retire(self) -> RetiredLog | None:
        """The finished log as a record of strings, numbers and bytes only (one object for the
        garbage collector to walk), or ``None`` while it runs; :meth:`from_retired` reads it back."""
        if not self._finished:
            return None
        done = self._done if self._done is not None else _Finished(self._events[self._start :])
        others = tuple((index, dump_event(event)) for index, event in done._others.items())
        return RetiredLog(
            self.stream_id,
            self.max_bytes,
            self._first_seq,
            self._bytes,
            done._text,
            done._ends.typecode,
            done._ends.tobytes(),
            others,
        )

    @classmethod
    def from_retired(cls, record: RetiredLog) -> MemoryStreamLog:
        """A finished log with the events of ``record`` (what :meth:`retire` made)."""
        log = cls(record.stream_id, record.max_bytes)
        others = {index: load_event(data) for index, data in record.others}
        ends = array(record.ends_type)
        ends.frombytes(record.ends)
        log._done = _Finished.restored(record.text, ends, others)
        log._first_seq = record.first_seq
        log._bytes = record.held_bytes
        log._finished = True
        return log

    def append_nowait(self, event: Event) -> int:
        """Append without awaiting (the memory log never blocks)."""
        if self._finished:
            raise RuntimeError(f"stream {self.stream_id} already finished")
        self._events.append(event)
        self._bytes += EVENT_OVERHEAD + len(event.text) if type(event) is TextDelta else event_size(event)
        if self._bytes > self.max_bytes:
            self._trim()
        if isinstance(event, Finish):
            self._finished = True
            if not self._readers:
                self._compact()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return self.last_seq

    def _trim(self) -> None:
        while self._bytes > self.max_bytes and len(self._events) - self._start > 1:
            self._bytes -= _size(self._events[self._start])
            self._events[self._start] = None  # release it now, not at the next compaction
            self._start += 1
            self._first_seq += 1
        if self._start > 64 and self._start * 2 > len(self._events):
            del self._events[: self._start]
            self._start = 0

    def _compact(self) -> None:
        """Hold the finished log as :class:`_Finished`. Done once no reader is attached: a reader
        still behind (a burst at max rate often ends before it has been sent) would otherwise get
        every event rebuilt from the compact form, about 4% of the relay's CPU then."""
        self._done = _Finished(self._events[self._start :])
        self._events = []
        self._start = 0

    def _held(self) -> list[_Held] | _Finished:
        return self._events if self._done is None else self._done

    def _batch(self, after: int) -> Batch:
        index = self._start + after + 1 - self._first_seq
        if self._done is not None:
            end = self._done.batch_end(index, BATCH_BYTES)
            return [(after + 1 + i, event) for i, event in enumerate(self._done[index:end])]
        events, seq, total, count = self._events, after, 0, len(self._events)
        batch: Batch = []
        while index < count and (total < BATCH_BYTES or not batch):
            held = events[index]
            index += 1
            seq += 1
            if type(held) is TextDelta:
                batch.append((seq, held))
                total += EVENT_OVERHEAD + len(held.text)
            elif isinstance(held, str):
                batch.append((seq, TextDelta(held)))
                total += EVENT_OVERHEAD + len(held)
            elif held is not None:
                batch.append((seq, held))
                total += event_size(held)
        return batch

    def _passed(self, batch: Batch) -> None:
        """The only reader has handed ``batch`` on: hold its text deltas as their texts."""
        events, shift = self._events, self._start - self._first_seq
        for seq, event in batch:
            if type(event) is TextDelta:
                index = seq + shift
                if index >= self._start and events[index] is event:
                    events[index] = event.text

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        pos = max(after, 0)
        loop = asyncio.get_running_loop()
        quiet = _QuietTimer(loop, idle, Alarms() if self.alarms is None else self.alarms) if idle else None
        self._readers += 1
        try:
            while True:
                if pos < self._first_seq - 1:
                    yield lagged_batch(self.stream_id, pos, self._first_seq)
                    return
                if pos < self.last_seq:
                    batch = self._batch(pos)
                    pos = batch[-1][0]
                    if quiet is not None:
                        quiet.reset()
                    yield batch
                    if self._readers == 1 and self._done is None:
                        self._passed(batch)
                    del batch  # not held (with its events) while the reader waits for the next
                    continue
                if self._finished:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                if quiet is None:
                    await waiter
                    continue
                quiet.waiter = waiter  # awaited here, not in a coroutine of the clock's (one a wait)
                try:
                    await waiter
                    continue
                except asyncio.CancelledError:
                    if not quiet.ran_out():
                        raise  # the reader itself was cancelled, not only its wait
                finally:
                    quiet.waiter = None
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                yield None
        finally:
            if quiet is not None:
                quiet.close()
            self._readers -= 1
            if self._finished and not self._readers and self._done is None:
                self._compact()


class RetiredLog(NamedTuple):
    """A finished memory log as plain data (see :meth:`MemoryStreamLog.retire`)."""

    stream_id: str
    max_bytes: int
    first_seq: int
    held_bytes: int
    text: str
    ends_type: str  # the typecode of ``ends``' array
    ends: bytes  # the array of where each event's text ends in ``text`` (arrays are tracked, bytes not)
    others: tuple[tuple[int, str], ...]  # (position, the event as codec JSON)


_Held = Event | str | None
"""What a running log holds for an event: the event as appended, a text delta's text once read
(:meth:`MemoryStreamLog._passed`), or ``None`` once the bound has dropped it."""


def _event(held: str | Event) -> Event:
    return TextDelta(held) if isinstance(held, str) else held


def _size(held: _Held) -> int:
    if isinstance(held, str):
        return EVENT_OVERHEAD + len(held)
    return 0 if held is None else event_size(held)


class _Finished:
    """A finished log's events, compact: the texts of all its deltas in one string with where each
    one ends (4 bytes a token; a few objects for the garbage collector to walk instead of one a
    token), and the few other events by position. A slice rebuilds the events it covers; each
    event's size (``event_size``) follows from its text's length, so no size is kept."""

    __slots__ = ("_ends", "_others", "_text")

    def __init__(self, events: Sequence[_Held]) -> None:
        parts: list[str] = []
        ends: list[int] = []
        others: dict[int, Event] = {}
        end = 0
        for index, held in enumerate(events):
            if isinstance(held, str) or type(held) is TextDelta:
                text = held if isinstance(held, str) else held.text
                parts.append(text)
                end += len(text)
            elif held is not None:
                others[index] = held
            ends.append(end)
        self._text = "".join(parts)
        self._ends = array("I" if end < 1 << 32 else "Q", ends)
        self._others = others

    @classmethod
    def restored(cls, text: str, ends: array[int], others: dict[int, Event]) -> _Finished:
        done = cls(())
        done._text, done._ends, done._others = text, ends, others
        return done

    def __len__(self) -> int:
        return len(self._ends)

    def batch_end(self, index: int, budget: int) -> int:
        """Where a batch from ``index`` ends: events worth ``budget`` bytes as ``event_size`` counts
        them (at least one event), as the running log's sizes would say."""
        ends, others, count = self._ends, self._others, len(self._ends)
        begin = ends[index - 1] if index else 0
        end, total = index, 0
        while end < count and (total < budget or end == index):
            stop = ends[end]
            other = others.get(end)
            total += EVENT_OVERHEAD + stop - begin if other is None else event_size(other)
            begin = stop
            end += 1
        return end

    def __getitem__(self, where: slice) -> list[Event]:
        start, stop, _ = where.indices(len(self._ends))
        events: list[Event] = []
        begin = self._ends[start - 1] if start else 0
        for index in range(start, stop):
            end = self._ends[index]
            other = self._others.get(index)
            events.append(TextDelta(self._text[begin:end]) if other is None else other)
            begin = end
        return events


class _QuietTimer(Alarm):
    """A reader's heartbeat clock: "``idle`` seconds without a batch", as an alarm set lazily.

    An alarm per wait would cost a heap push for every token; this one is moved only when it fires:
    if the reader got a batch since, it is set again for ``idle`` seconds after that batch, otherwise
    it ends the current wait.
    """

    __slots__ = ("_alarms", "_idle", "_last", "_loop", "_quiet", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float, alarms: Alarms) -> None:
        super().__init__()
        self._loop = loop
        self._idle = idle
        self._alarms = alarms
        self._last = loop.time()
        self.waiter: asyncio.Future[None] | None = None
        """What the reader awaits now (the clock cancels it when the quiet period runs out)."""
        self._quiet = False
        alarms.set(self, self._last + idle)

    def reset(self) -> None:
        """A batch went out: the quiet period starts again now."""
        self._last = self._loop.time()

    def ran_out(self) -> bool:
        """Whether the wait just cancelled was ended by this clock (its reader was not cancelled
        too); the quiet period starts again then."""
        task = asyncio.current_task()
        if not self._quiet or (task is not None and task.cancelling()):
            return False
        self._quiet = False
        self.reset()
        return True

    def fire(self) -> None:
        now = self._loop.time()
        due = self._last + self._idle
        if due - now > DUE_WITHIN_S or self.waiter is None or self.waiter.done():
            self._alarms.set(self, max(due, now + DUE_WITHIN_S))
            return
        self._quiet = True
        self.waiter.cancel()
        self._alarms.set(self, now + self._idle)

    def close(self) -> None:
        self._alarms.cancel(self)
