"""Live streams by id: start a generation, attach readers, cancel, drain, and forget after retention.

How disconnect differs from Stop: :meth:`Stream.cancel` (an explicit Stop) cancels at once. When
the last reader detaches, the stream's policy decides: ``cancel`` starts a grace timer of ``grace_s``
(a reader that attaches in time, e.g. after a reload, calls it off; readers in other processes of a
shared backend count too), ``finish`` lets the generation run to its end. Either way the generation
ends with exactly one ``Finish`` in its log, and the log stays readable for ``retention_s``.

The cancellation races: a stream is cancelled at most once (the first reason wins), and a task
cancelled before it ever ran still gets its end logged by the done callback, so no reader waits
for a ``Finish`` that never comes.

Shutdown: :meth:`StreamHub.drain` refuses new generations (``shutting_down``), gives the running
ones ``grace`` seconds to finish, then cancels the rest with the reason ``shutdown``, which logs a
``shutting_down`` error for their readers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

from sluiceway.errors import ShuttingDownError, SluicewayError
from sluiceway.events import TextDelta, Usage
from sluiceway.providers.base import Provider
from sluiceway.requests import ChatRequest
from sluiceway.streams.alarms import Alarms
from sluiceway.streams.backend import MemoryBackend, RemoteStreamInfo, StreamBackend
from sluiceway.streams.generation import (
    Candidate,
    FirstSent,
    Meter,
    RetryPolicy,
    StreamObserver,
    Timeouts,
    end_cancelled,
    run_generation,
)
from sluiceway.streams.limits import ConcurrencyLimits
from sluiceway.streams.log import DEFAULT_MAX_BYTES, Batch, MemoryStreamLog, RetiredLog, StreamLog
from sluiceway.streams.shutdown import ShutdownSignal

DisconnectPolicy: TypeAlias = Literal["cancel", "finish"]
ObserverFactory: TypeAlias = Callable[[str, str], StreamObserver]
"""Called with ``(model, protocol)`` for each new generation; returns what its meter reports to."""
logger = logging.getLogger("sluiceway.streams")


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Lifecycle knobs shared by every stream of one server."""

    disconnect_policy: DisconnectPolicy = "cancel"
    grace_s: float = 5.0
    retention_s: float = 600.0
    max_stream_bytes: int = DEFAULT_MAX_BYTES
    max_concurrent: int = 0
    max_concurrent_per_model: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retire_after_s: float = 10.0
    """How long a finished in-memory stream stays as it is (its request has logged its line by
    then) before it is kept as a plain record for the rest of ``retention_s`` (see :class:`Retired`)."""


class Stream:
    """One generation this process runs: its log, its task and who is reading it."""

    def __init__(
        self,
        stream_id: str,
        log: StreamLog,
        policy: DisconnectPolicy = "cancel",
        grace_s: float = 5.0,
        *,
        model: str | None = None,
        key: str | None = None,
        backend: StreamBackend | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.log = log
        self.policy = policy
        self.grace_s = grace_s
        self.model = model
        self.key = key
        self.meter = Meter(model=model)
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self.cancelled_by: str | None = None
        self.first_sent = FirstSent()
        """Set once a reader has handed the first text on (the generation waits for it, briefly)."""
        self.left_unread = False
        """Whether its last reader left before the end (its request's log line is written then)."""
        self._backend = backend
        self._grace: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        """Whether the generation has ended (its ``Finish`` is logged)."""
        return self.log.finished

    def cancel(self, why: str = "stop") -> None:
        """Stop the generation now; ``why`` is ``stop``, ``disconnect`` or ``shutdown`` (first one wins)."""
        if self.task is not None and not self.task.done() and self.cancelled_by is None:
            self.cancelled_by = self.meter.cancel_reason = why
            self.task.cancel(why)

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        """Read the log after ``after`` as a reader: attached while iterating, detached at the end."""
        self._attach()
        try:
            async for batch in self.log.read(after, idle):
                yield batch
                if batch and not self.first_sent.is_set() and _has_text(batch):
                    self.first_sent.set()
                del batch  # not held while waiting for the next
        finally:
            self._detach()

    def readers_left(self) -> None:
        """No reader is attached here any more: apply the disconnect policy."""
        if self.readers > 0 or self.finished or self.policy != "cancel" or self._grace is not None:
            return
        self._grace = asyncio.create_task(self._cancel_after_grace())

    def _attach(self) -> None:
        self.readers += 1
        self._call_off_grace()

    def _call_off_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _detach(self) -> None:
        self.readers -= 1
        self.left_unread = self.readers == 0 and not self.finished
        self.readers_left()

    async def _cancel_after_grace(self) -> None:
        await asyncio.sleep(self.grace_s)
        remote = 0
        if self._backend is not None:
            try:
                remote = await self._backend.remote_readers(self.stream_id)
            except Exception:  # the backend is down: nobody can be reading elsewhere either
                logger.warning("could not count remote readers of %s; cancelling", self.stream_id)
        self._grace = None
        if self.readers == 0 and remote == 0:
            self.cancel("disconnect")


class RemoteStream(Stream):
    """A stream another process runs (shared backend): read from the shared log, cancel by message."""

    def __init__(self, stream_id: str, info: RemoteStreamInfo, backend: StreamBackend) -> None:
        super().__init__(stream_id, info.log, "finish", 0.0, model=info.model, backend=backend)
        self.owner = info.owner
        self._finished_at_open = info.finished
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def finished(self) -> bool:
        return self._finished_at_open or self.log.finished

    def cancel(self, why: str = "stop") -> None:
        """Ask the owning process to cancel (the answer shows up in the log)."""
        if self._backend is None or self.cancelled_by is not None:
            return
        self.cancelled_by = why
        task = asyncio.create_task(self._backend.request_cancel(self.stream_id, self.owner, why))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[Batch | None, None]:
        assert self._backend is not None
        await self._backend.attach_remote(self.stream_id)
        try:
            async for batch in self.log.read(after, idle):
                yield batch
        finally:
            try:
                await asyncio.shield(self._backend.detach_remote(self.stream_id, self.owner))
            except Exception:  # the backend is down; the owner's grace check fails safe (cancels)
                logger.warning("could not detach a remote reader of %s", self.stream_id)


class Retired(NamedTuple):
    """A finished in-memory stream, kept for resume as plain data.

    A finished ``Stream`` keeps about 19 objects the garbage collector tracks (the stream, its
    meter, its done task and coroutine, the log's last events …); with thousands of answers kept
    for ``retention_s`` every full collection walked them all (20,000 answers: 150 ms, against 17 ms
    retired; ``benchmarks/retained_logs.py``). This record is two tracked objects holding strings,
    numbers and bytes: :meth:`StreamHub.get` rebuilds a finished ``Stream`` from it when asked (its
    events, end, meter and key as they were; not its metrics observer).
    """

    log: RetiredLog
    model: str | None
    key: str | None
    cancelled_by: str | None
    meter: tuple[float, float | None, float | None, int, int | None, int | None, str | None, int, str | None]

    @classmethod
    def of(cls, stream: Stream, log: RetiredLog) -> Retired:
        m = stream.meter
        usage = (m.usage.input_tokens, m.usage.output_tokens) if m.usage is not None else (None, None)
        meter = (
            m.started,
            m.first_token,
            m.last_token,
            m.deltas,
            *usage,
            m.model,
            m.attempts,
            m.cancel_reason,
        )
        return cls(log, stream.model, stream.key, stream.cancelled_by, meter)

    def revive(self, backend: StreamBackend) -> Stream:
        """A finished ``Stream`` with this record's log and meter (not the one that ran)."""
        log = self.log
        stream = Stream(
            log.stream_id, MemoryStreamLog.from_retired(log), model=self.model, key=self.key, backend=backend
        )
        started, first, last, deltas, usage_in, usage_out, model, attempts, reason = self.meter
        usage = Usage(usage_in, usage_out) if usage_in is not None and usage_out is not None else None
        stream.meter = Meter(started, first, last, deltas, usage, model, attempts, reason)
        stream.cancelled_by = self.cancelled_by
        stream.first_sent.set()
        return stream


class StreamHub:
    """All streams of one server process, by id, over one backend."""

    def __init__(
        self,
        settings: HubSettings | None = None,
        backend: StreamBackend | None = None,
        *,
        observer: ObserverFactory | None = None,
    ) -> None:
        self.settings = settings or HubSettings()
        self.backend: StreamBackend = backend or MemoryBackend()
        self.observer = observer
        self.limits = ConcurrencyLimits(self.settings.max_concurrent, self.settings.max_concurrent_per_model)
        self.alarms = Alarms()
        """One loop timer for the deadlines of every generation here and its readers' heartbeat clocks."""
        self._streams: dict[str, Stream | Retired] = {}
        self._keys: dict[str, str] = {}
        self._to_retire: deque[tuple[float, str]] = deque()  # (when, stream id), in time order
        self._to_forget: deque[tuple[float, str]] = deque()
        self._sweep: asyncio.Handle | None = None  # uvloop's call_at gives a plain Handle when past due
        self._sweep_due = 0.0
        self._tasks: dict[asyncio.Task[None], Stream | None] = {}  # running, with their streams
        self._closing = False
        self._drain: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def aopen(self) -> None:
        """Connect the backend and start listening for control messages."""
        await self.backend.start(self._on_control)

    def start(
        self,
        provider: Provider,
        request: ChatRequest,
        *,
        policy: DisconnectPolicy | None = None,
        grace_s: float | None = None,
        key: str | None = None,
        fallbacks: Sequence[Candidate] = (),
        protocol: str = "",
    ) -> Stream:
        """Start generating ``request`` in a task of its own and return the new stream.

        Raises :class:`~sluiceway.errors.OverloadedError` beyond the concurrency limits and
        ``ShuttingDownError`` once draining, before anything was started. ``key`` (e.g.
        ``"aisdk:<chat id>"``) names the stream for :meth:`find`; ``fallbacks`` are tried in order
        when ``request`` fails before its first token; ``protocol`` (the route's) labels its metrics.
        """
        if self._closing:
            raise ShuttingDownError("the server is shutting down; try another instance", retry_after=1)
        model = request.model
        self.limits.acquire(model)
        stream_id = secrets.token_hex(8)
        log = self.backend.create_log(
            stream_id, key=key, model=model, max_bytes=self.settings.max_stream_bytes
        )
        if isinstance(log, MemoryStreamLog) and log.alarms is None:
            log.alarms = self.alarms  # its readers' heartbeat clocks go with the generations' deadlines
        stream = Stream(
            stream_id,
            log,
            policy or self.settings.disconnect_policy,
            self.settings.grace_s if grace_s is None else grace_s,
            model=model,
            key=key,
            backend=self.backend,
        )
        self._streams[stream_id] = stream
        if key is not None:
            self._keys[key] = stream_id
        if self.observer is not None:
            stream.meter.observer = self.observer(model, protocol)
        run = run_generation(
            provider,
            request,
            log,
            stream.meter,
            fallbacks=fallbacks,
            timeouts=self.settings.timeouts,
            retry=self.settings.retry,
            first_sent=stream.first_sent,
            alarms=self.alarms,
        )
        stream.task = task = asyncio.create_task(run, name=f"sluiceway-stream-{stream_id}")
        self._tasks[task] = stream
        task.add_done_callback(self._finished)  # (the stream is looked up: a partial is ≈ 0.2 KB)
        return stream

    def get(self, stream_id: str) -> Stream | None:
        """The live or retained stream with this id, if this process runs it."""
        entry = self._streams.get(stream_id)
        return entry.revive(self.backend) if isinstance(entry, Retired) else entry

    async def lookup(self, stream_id: str) -> Stream | None:
        """The stream with this id, run here or (shared backend) by another process."""
        stream = self.get(stream_id)
        if stream is not None:
            return stream
        info = await self.backend.open_remote(stream_id)
        return None if info is None else RemoteStream(stream_id, info, self.backend)

    async def find(self, key: str) -> Stream | None:
        """The newest stream started with ``key``, if it is still retained (with a shared backend the
        newest may have started on another instance, so the backend's answer wins)."""
        stream_id = await self.backend.resolve_key(key) or self._keys.get(key)
        return None if stream_id is None else await self.lookup(stream_id)

    @property
    def active(self) -> int:
        """Generations still running in this process."""
        return len(self._tasks)

    @property
    def closing(self) -> bool:
        """Whether the hub has begun to drain."""
        return self._closing

    def drain_on(self, signal: ShutdownSignal, grace_s: float) -> None:
        """Begin draining, with ``grace_s``, as soon as ``signal`` is triggered (e.g. by SIGTERM)."""

        async def watch() -> None:
            await signal.wait()
            self.begin_drain(grace_s)

        self._watcher = asyncio.create_task(watch(), name="sluiceway-drain-watcher")

    def begin_drain(self, grace_s: float) -> asyncio.Task[None]:
        """Start :meth:`drain` once, in the background; later calls return the same task."""
        self._closing = True
        if self._drain is None:
            self._drain = asyncio.create_task(self.drain(grace_s))
        return self._drain

    async def drain(self, grace_s: float) -> None:
        """Refuse new generations, let the running ones finish for ``grace_s``, end the rest."""
        self._closing = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        await self._cancel_all()

    async def aclose(self) -> None:
        """Finish draining (or end every generation now) and disconnect the backend."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._drain is not None:
            await self._drain
        await self._cancel_all()
        await self.backend.aclose()

    async def _cancel_all(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        streams = [s for s in self._streams.values() if isinstance(s, Stream)]
        for stream in streams:
            stream._call_off_grace()  # no grace timer outlives the hub
        running = [s for s in streams if s.task is not None and not s.task.done()]
        for stream in running:
            stream.cancel("shutdown")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            if pending:
                logger.warning("%d generations did not stop within 10 s of cancelling", len(pending))

    def _on_control(self, op: str, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if not isinstance(stream, Stream):  # unknown here, or retired (finished)
            return
        if op == "cancel":
            stream.cancel("stop")
        elif op == "idle":
            stream.readers_left()

    def _finished(self, task: asyncio.Task[None]) -> None:
        stream = self._tasks.pop(task, None)
        failure = None if task.cancelled() else task.exception()
        if stream is None:  # an ender (below)
            if failure is not None:
                logger.warning("a stream cancelled before it ran could not log its end: %r", failure)
            return
        model = stream.model or ""
        if failure is not None:
            _log_failure(stream, failure)
        self.limits.release(model)
        stream._call_off_grace()
        if stream.left_unread and stream.readers == 0:
            _log_end_unread(stream, model)
        if task.cancelled() and not stream.log.finished:  # cancelled before it ever ran
            ender = asyncio.create_task(
                end_cancelled(stream.log, stream.meter, stream.cancelled_by or "stop")
            )
            self._tasks[ender] = None
            ender.add_done_callback(self._finished)
        now = asyncio.get_running_loop().time()
        due = now + self.settings.retention_s
        if self.settings.retire_after_s < self.settings.retention_s:
            due = now + self.settings.retire_after_s
            self._to_retire.append((due, stream.stream_id))
        self._to_forget.append((now + self.settings.retention_s, stream.stream_id))
        if self._sweep is None or due < self._sweep_due:  # e.g. armed for an expiry, later
            if self._sweep is not None:
                self._sweep.cancel()
            self._arm_sweep()

    def _arm_sweep(self) -> None:
        """One timer for every finished stream: at the next retirement or expiry due."""
        due = [queue[0][0] for queue in (self._to_retire, self._to_forget) if queue]
        self._sweep_due = min(due, default=0.0)
        self._sweep = asyncio.get_running_loop().call_at(self._sweep_due, self._swept) if due else None

    def _swept(self) -> None:
        now = asyncio.get_running_loop().time()
        while self._to_retire and self._to_retire[0][0] <= now:
            self._retire(self._to_retire.popleft()[1])
        while self._to_forget and self._to_forget[0][0] <= now:
            self._forget(self._to_forget.popleft()[1])
        self._arm_sweep()

    def _retire(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if not isinstance(stream, Stream) or not isinstance(stream.log, MemoryStreamLog):
            return
        if stream.readers or stream.task is None or not stream.task.done():  # still being read: later
            when = asyncio.get_running_loop().time() + self.settings.retire_after_s
            self._to_retire.append((when, stream_id))
            return
        log = stream.log.retire()
        if log is not None:
            self._streams[stream_id] = Retired.of(stream, log)

    def _forget(self, stream_id: str) -> None:
        entry = self._streams.pop(stream_id, None)
        if entry is not None and entry.key is not None and self._keys.get(entry.key) == stream_id:
            del self._keys[entry.key]


def _has_text(batch: Batch) -> bool:
    return any(isinstance(event, TextDelta) for _, event in batch)


def _log_failure(stream: Stream, failure: BaseException) -> None:
    """A generation that raised instead of logging its end: its log failed while the end was being
    written (Redis gone, say; its readers were told by the log). Said here, or asyncio would report
    the exception as never retrieved."""
    if isinstance(failure, SluicewayError):
        logger.warning("stream %s could not log its end: %s", stream.stream_id, failure.code)
    else:
        logger.error("stream %s failed", stream.stream_id, exc_info=failure)


def _log_end_unread(stream: Stream, model: str) -> None:
    """A generation whose readers all left before its end: their requests' log lines were written
    when they left, with the tokens made until then; it went on through the grace period (or to
    its end under ``finish``), so what it reached in all is written here, once."""
    usage = stream.meter.usage_so_far()
    fields = {
        "stream_id": stream.stream_id,
        "model": model,
        "outcome": "cancelled" if stream.cancelled_by else "finished",
        "cancelled_by": stream.cancelled_by,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }
    logger.info(
        "stream %s ended after its readers left: %s, %d output tokens",
        stream.stream_id,
        fields["outcome"],
        usage.output_tokens,
        extra={"generation": fields},
    )
