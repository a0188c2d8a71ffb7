"""Runs one provider stream into a log, measuring it, and ends it with exactly one ``Finish``.

How cancellation works: the hub cancels the task running :func:`run_generation`. The
``CancelledError`` surfaces inside the provider's generator at its current ``await``; the
``finally`` makes sure the generator is closed (so the provider closes its upstream connection or stops its
worker thread) before this function logs the usage consumed so far and ``Finish("cancelled")``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sluiceway.errors import SluicewayError
from sluiceway.events import ErrorEvent, Finish, FinishReason, TextDelta, Usage
from sluiceway.providers.base import Provider
from sluiceway.requests import ChatRequest
from sluiceway.streams.log import StreamLog

logger = logging.getLogger("sluiceway.streams")


@dataclass(slots=True)
class Meter:
    """What a generation has produced so far; read by the log's final events and by metrics."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    deltas: int = 0
    usage: Usage | None = None

    def usage_so_far(self) -> Usage:
        """The provider's last usage, with output raised to the deltas actually received."""
        base = self.usage or Usage(0, 0)
        return Usage(base.input_tokens, max(base.output_tokens, self.deltas))

    def finish(self, reason: FinishReason) -> Finish:
        """``Finish`` with time to first token and tokens/s measured here."""
        if self.first_token is None:
            return Finish(reason)
        ttft_ms = round((self.first_token - self.started) * 1000, 2)
        span = (self.last_token or self.first_token) - self.first_token
        out = self.usage_so_far().output_tokens
        tps = round((out - 1) / span, 2) if span > 0 and out > 1 else None
        return Finish(reason, ttft_ms=ttft_ms, tokens_per_s=tps)


async def run_generation(provider: Provider, request: ChatRequest, log: StreamLog, meter: Meter) -> None:
    """Relay ``provider.stream(request)`` into ``log``; never raises except for its own bugs' sake."""
    try:
        events = provider.stream(request)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    now = time.perf_counter()
                    if meter.first_token is None:
                        meter.first_token = now
                    meter.last_token = now
                    meter.deltas += 1
                elif isinstance(event, Usage):
                    meter.usage = event
                elif isinstance(event, Finish):
                    await log.append(meter.finish(event.reason))
                    return
                await log.append(event)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        await log.append(meter.finish("stop"))
    except asyncio.CancelledError:
        await _end(log, meter, None, "cancelled")
    except SluicewayError as exc:
        await _end(log, meter, exc.to_event(), "error")
    except Exception:
        logger.exception("provider failed", extra={"stream_id": log.stream_id})
        await _end(log, meter, ErrorEvent("internal", "internal error in the model provider"), "error")


async def _end(log: StreamLog, meter: Meter, error: ErrorEvent | None, reason: FinishReason) -> None:
    if log.finished:
        return
    await log.append(meter.usage_so_far())
    if error is not None:
        await log.append(error)
    await log.append(meter.finish(reason))
