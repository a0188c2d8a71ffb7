"""Runs one generation into a log, measuring it, and ends it with exactly one ``Finish``.

What reaches the log is always well formed: ``Usage? TextDelta* Usage (ErrorEvent)? Finish``. A
provider's early ``Usage`` is held back until its first text, so an attempt that fails before any
text leaves no trace and the next one starts clean.

Retries and fallbacks: a ``rate_limited`` / ``upstream_unavailable`` / ``upstream_error`` failure
before the first text is retried with exponential backoff (at least the ``Retry-After`` the
upstream asked for), then the next candidate (the model's ``fallbacks``, in order) is tried. Once
text has been logged no switch happens: the failure becomes an ``ErrorEvent``.

Timeouts: one ``asyncio.timeout`` scope surrounds the whole run; the deadline is
``started + first_token_s`` until the first text, then ``last text + idle_s``, never later than
``started + total_s``. A :class:`_Watchdog` alarm stands for it (on the hub's shared
:class:`~sluiceway.streams.alarms.Alarms`), so that a token costs no timer work: when it fires it
looks at the meter, and either moves itself to the deadline as it now stands
or, once that has passed, makes the scope fire. The provider's generator is then cancelled at its
current ``await`` (so it releases its upstream) and the log gets an ``upstream_timeout`` error.

How cancellation works: the hub records the reason on the meter (``meter.cancel_reason``) and
cancels the task running :func:`run_generation`. The ``CancelledError`` surfaces inside the
provider's generator at its current ``await``; the generator is closed before this function logs the
usage consumed so far and ``Finish("cancelled")`` - or, for ``"shutdown"``, a ``shutting_down``
error. Some libraries swallow a ``CancelledError`` now and then (redis-py 8 on Python 3.11 does, in
the log's appends), so the relay loop also checks the reason before each wait on the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sluiceway.errors import (
    ShuttingDownError,
    SluicewayError,
    UpstreamError,
    UpstreamTimeoutError,
    error_from_code,
)
from sluiceway.events import ErrorEvent, Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.providers.base import Provider
from sluiceway.requests import ChatRequest
from sluiceway.streams.alarms import Alarm, Alarms
from sluiceway.streams.log import MemoryStreamLog, StreamLog

logger = logging.getLogger("sluiceway.streams")

RETRYABLE_CODES = frozenset({"rate_limited", "upstream_unavailable", "upstream_error"})
Candidate = tuple[ChatRequest, Provider]
FIRST_SEND_WAIT_S = 0.02
"""How long the rest of an answer waits for a reader to send its first text (none may be attached)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Limits on waiting for the provider, in seconds; ``0`` switches one off."""

    first_token_s: float = 60.0
    idle_s: float = 30.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to retry one model before its first token, and how long to wait in between."""

    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (never less than ``retry_after``)."""
        backoff = min(self.backoff_s * 2.0**attempt, self.max_backoff_s)
        return max(backoff, retry_after or 0.0)


class FirstSent:
    """Set once a reader has handed the stream's first text on; the generation waits for it,
    briefly (:data:`FIRST_SEND_WAIT_S`). One per stream, so kept small: an ``asyncio.Event``
    costs ≈ 860 bytes (a deque for its waiters); this ≈ 60, plus a future only while waited on."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait(self) -> None:
        if self._set:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


class StreamObserver(Protocol):
    """Told how one generation goes (metrics): its first token, each later one, and its end.

    Called on the event loop with the meter before it records the token (``meter.last_token`` is
    still the previous one). ``on_token`` runs for every token: it must be nearly free.
    """

    def on_first_token(self, meter: Meter, now: float) -> None: ...

    def on_token(self, meter: Meter, now: float) -> None: ...

    def on_finish(self, meter: Meter, reason: FinishReason, error: ErrorEvent | None) -> None: ...


@dataclass(slots=True)
class Meter:
    """What a generation has produced so far; read by the log's final events and by metrics."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    deltas: int = 0
    usage: Usage | None = None
    model: str | None = None
    attempts: int = 0
    cancel_reason: str | None = None
    observer: StreamObserver | None = None
    stop_sequence: str | None = None
    """The stop sequence the provider said ended the answer (its ``Finish``'s), for the log's end."""

    def usage_so_far(self) -> Usage:
        """The provider's last usage, with output raised to the deltas actually received."""
        base = self.usage or Usage(0, 0)
        return Usage(base.input_tokens, max(base.output_tokens, self.deltas))

    def finish(self, reason: FinishReason) -> Finish:
        """``Finish`` with time to first token and tokens/s measured here (and, for ``stop``, the
        provider's stop sequence)."""
        stop_sequence = self.stop_sequence if reason == "stop" else None
        if self.first_token is None:
            return Finish(reason, stop_sequence=stop_sequence)
        ttft_ms = round((self.first_token - self.started) * 1000, 2)
        span = (self.last_token or self.first_token) - self.first_token
        out = self.usage_so_far().output_tokens
        tps = round((out - 1) / span, 2) if span > 0 and out > 1 else None
        return Finish(reason, ttft_ms=ttft_ms, tokens_per_s=tps, stop_sequence=stop_sequence)

    def deadline(self, timeouts: Timeouts) -> float | None:
        """When waiting for the provider must stop (``perf_counter`` time), or ``None``."""
        limits = []
        if timeouts.total_s:
            limits.append(self.started + timeouts.total_s)
        if self.last_token is None and timeouts.first_token_s:
            limits.append(self.started + timeouts.first_token_s)
        if self.last_token is not None and timeouts.idle_s:
            limits.append(self.last_token + timeouts.idle_s)
        return min(limits) if limits else None

    def timeout_error(self, timeouts: Timeouts) -> UpstreamTimeoutError:
        """Which of the limits fired, as the error to log."""
        now = time.perf_counter()
        if timeouts.total_s and now >= self.started + timeouts.total_s - 0.001:
            return UpstreamTimeoutError(f"the answer took longer than {timeouts.total_s:g} s in total")
        if self.first_token is None:
            return UpstreamTimeoutError(f"no first token within {timeouts.first_token_s:g} s")
        return UpstreamTimeoutError(f"no new token for {timeouts.idle_s:g} s")


async def run_generation(
    provider: Provider,
    request: ChatRequest,
    log: StreamLog,
    meter: Meter,
    *,
    fallbacks: Sequence[Candidate] = (),
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    first_sent: FirstSent | None = None,
    alarms: Alarms | None = None,
) -> None:
    """Relay ``request`` (then its fallbacks) into ``log``; never raises except for cancellation races.

    ``first_sent``, set by a reader once it has handed the first text on, holds the rest of a burst
    back until then (at most :data:`FIRST_SEND_WAIT_S`), so the first word leaves before it.
    ``alarms`` keeps the deadline (a hub's, shared by its generations; one of its own if unset).
    """
    timeouts = timeouts or Timeouts()
    try:
        await log.open()
        chain = [(request, provider), *fallbacks]
        alarms = Alarms() if alarms is None else alarms  # (an Alarms with none set is falsy)
        await _run_chain(chain, log, meter, timeouts, retry or RetryPolicy(), first_sent, alarms)
    except asyncio.CancelledError as exc:
        _uncancel()
        await end_cancelled(log, meter, meter.cancel_reason or (exc.args[0] if exc.args else "stop"))
    except SluicewayError as exc:
        await _end(log, meter, exc.to_event(), "error")
    except Exception:
        logger.exception("provider failed", extra={"stream_id": log.stream_id})
        await _end(log, meter, ErrorEvent("internal", "internal error in the model provider"), "error")


async def end_cancelled(log: StreamLog, meter: Meter, why: str) -> None:
    """Log the end of a cancelled generation: usage so far, then ``Finish("cancelled")``, or for
    ``why == "shutdown"`` a ``shutting_down`` error (the client did not ask for this end)."""
    if why == "shutdown":
        error = ShuttingDownError("the server is shutting down; the answer ends here").to_event()
        await _end(log, meter, error, "error")
    else:
        await _end(log, meter, None, "cancelled")


def _uncancel() -> None:
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()


async def _run_chain(
    candidates: list[Candidate],
    log: StreamLog,
    meter: Meter,
    timeouts: Timeouts,
    retry: RetryPolicy,
    first_sent: FirstSent | None,
    alarms: Alarms,
) -> None:
    last: SluicewayError | None = None
    try:
        async with asyncio.timeout(None) as scope:
            for request, provider in candidates:
                meter.model = request.model
                for attempt in range(retry.retries + 1):
                    try:
                        await _relay(provider, request, log, meter, timeouts, scope, first_sent, alarms)
                        return
                    except SluicewayError as exc:
                        if meter.deltas or exc.code not in RETRYABLE_CODES:
                            raise
                        last = exc
                        logger.info("%s failed before its first token: %s", request.model, exc.code)
                        if _refused(exc):
                            break  # sent again, the request would be refused again: the next model
                    if attempt == retry.retries:
                        break
                    if not await _backoff(meter, timeouts, scope, retry, attempt, last):
                        break
    except TimeoutError:
        raise meter.timeout_error(timeouts) from None
    assert last is not None
    raise last


def _refused(error: SluicewayError) -> bool:
    """An upstream's refusal of the request itself (a 4xx): the same model would refuse it again."""
    return isinstance(error, UpstreamError) and error.refused


async def _backoff(
    meter: Meter,
    timeouts: Timeouts,
    scope: asyncio.Timeout,
    retry: RetryPolicy,
    attempt: int,
    error: SluicewayError,
) -> bool:
    """Wait before the next attempt; ``False`` (no wait) when the deadline comes first."""
    delay = retry.delay(attempt, error.retry_after)
    deadline = meter.deadline(timeouts)
    if deadline is not None and time.perf_counter() + delay >= deadline:
        return False
    scope.reschedule(None)
    await asyncio.sleep(delay)
    return True


async def _relay(
    provider: Provider,
    request: ChatRequest,
    log: StreamLog,
    meter: Meter,
    timeouts: Timeouts,
    scope: asyncio.Timeout,
    first_sent: FirstSent | None,
    alarms: Alarms,
) -> None:
    """One attempt: provider events into the log until its ``Finish`` (or its end)."""
    meter.attempts += 1
    meter.usage = None
    events = provider.stream(request)
    watchdog = _Watchdog(scope, meter, timeouts, alarms)
    append_nowait = log.append_nowait if isinstance(log, MemoryStreamLog) else None
    try:
        while True:
            if meter.cancel_reason is not None:  # a cancel some library swallowed on the way
                raise asyncio.CancelledError(meter.cancel_reason)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            if append_nowait is not None and meter.deltas and type(event) is TextDelta:
                _counted(meter)  # a text after the first, into memory: what _record does without
                append_nowait(event)  # its two coroutines (in-process, 2.14 -> 1.96 µs a token)
                continue
            if await _record(event, log, meter):
                return
            if meter.deltas == 1 and isinstance(event, TextDelta):
                watchdog.rearm()  # from the first-token limit to the idle one, which may be sooner
                await _first_text_out(first_sent)
    finally:
        watchdog.close()
        await _aclose(events)
    await _end(log, meter, None, "stop")


class _Watchdog(Alarm):
    """The generation's deadline (:meth:`Meter.deadline`), checked lazily by one alarm.

    Moving an ``asyncio.timeout`` before every token costs a timer-heap push and a cancel per token;
    between tokens the deadline only moves later, so the alarm is set once and, when it fires,
    either set again for the deadline as it now stands or, once that has passed, makes ``scope`` fire
    now (which cancels the task, and the scope turns that into ``TimeoutError``). The first text may
    bring it closer (the idle limit replaces the first-token one): :meth:`rearm` then.
    """

    __slots__ = ("_alarms", "_meter", "_scope", "_timeouts")

    def __init__(self, scope: asyncio.Timeout, meter: Meter, timeouts: Timeouts, alarms: Alarms) -> None:
        super().__init__()
        self._scope = scope
        self._meter = meter
        self._timeouts = timeouts
        self._alarms = alarms
        self.rearm()

    def rearm(self) -> None:
        """Set the alarm for the deadline as it stands now (or fire the scope, if it has passed)."""
        deadline = self._meter.deadline(self._timeouts)
        if deadline is None:
            self._alarms.cancel(self)
            return
        wait = deadline - time.perf_counter()
        now = asyncio.get_running_loop().time()
        if wait <= 0.0005:  # timers fire to the millisecond: close enough is due
            self._alarms.cancel(self)
            self._scope.reschedule(now)
            return
        self._alarms.set(self, now + wait)

    def fire(self) -> None:
        self.rearm()

    def close(self) -> None:
        self._alarms.cancel(self)
        if not self._scope.expired():
            self._scope.reschedule(None)


async def _record(event: Event, log: StreamLog, meter: Meter) -> bool:
    """Log one provider event; ``True`` once the stream is complete."""
    if isinstance(event, TextDelta):
        if _counted(meter) and meter.usage is not None:
            await log.append(meter.usage)  # the usage known before the first text goes first
        await log.append(event)
    elif isinstance(event, Usage):
        meter.usage = event
    elif isinstance(event, Finish):
        meter.stop_sequence = event.stop_sequence
        await _end(log, meter, None, event.reason)
        return True
    elif isinstance(event, ErrorEvent):
        raise error_from_code(event.code, event.message, event.retry_after)
    return False


def _counted(meter: Meter) -> bool:
    """Count a text delta in ``meter`` (and its observer) as it arrives; ``True`` if it is the first."""
    now = time.perf_counter()
    first = meter.first_token is None
    if meter.observer is not None:
        if meter.last_token is None:
            meter.observer.on_first_token(meter, now)
        else:
            meter.observer.on_token(meter, now)
    if first:
        meter.first_token = now
    meter.last_token = now
    meter.deltas += 1
    return first


async def _first_text_out(first_sent: FirstSent | None) -> None:
    """Let the first text leave now, not after the burst the provider may hold behind it."""
    if first_sent is None:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FIRST_SEND_WAIT_S):
            await first_sent.wait()


async def _aclose(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _end(log: StreamLog, meter: Meter, error: ErrorEvent | None, reason: FinishReason) -> None:
    if log.finished:
        return
    if meter.observer is not None:
        meter.observer.on_finish(meter, reason, error)
    await log.append(meter.usage_so_far())
    if error is not None:
        await log.append(error)
    await log.append(meter.finish(reason))
