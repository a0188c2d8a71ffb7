"""One generation into a log: well-formed output, timeouts, retries, fallbacks and cancel reasons."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.providers.echo import EchoProvider
from sluiceway.requests import ChatRequest, Message
from sluiceway.streams.generation import FirstSent, Meter, RetryPolicy, Timeouts, run_generation
from sluiceway.streams.log import MemoryStreamLog
from tests.streams.polling import eventually
from tests.streams.providers import Script, ScriptedProvider

FAST_RETRY = RetryPolicy(retries=2, backoff_s=0.01, max_backoff_s=0.05)


def ask(model: str = "main") -> ChatRequest:
    return ChatRequest((Message("user", "hi"),), model)


async def run(
    plays: dict[str, Any],
    *,
    fallbacks: tuple[str, ...] = (),
    timeouts: Timeouts | None = None,
    retry: RetryPolicy = FAST_RETRY,
) -> tuple[list[Event], Meter, Script]:
    script = Script(plays)
    log, meter = MemoryStreamLog("s"), Meter()
    chain = [(replace(ask(), model=name), ScriptedProvider(name, script)) for name in fallbacks]
    async with asyncio.timeout(20):
        await run_generation(
            ScriptedProvider("main", script),
            ask(),
            log,
            meter,
            fallbacks=chain,
            timeouts=timeouts,
            retry=retry,
        )
    events = [event async for batch in log.read() for _, event in batch or ()]
    return events, meter, script


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def error_of(events: list[Event]) -> ErrorEvent:
    """The one error of a failed stream, which must come right before its ``Finish("error")``."""
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and events[-2] is errors[0]
    assert isinstance(events[-1], Finish) and events[-1].reason == "error"
    return errors[0]


def reason(events: list[Event]) -> str:
    assert isinstance(events[-1], Finish)
    return events[-1].reason


async def test_a_good_stream_is_logged_well_formed_and_measured() -> None:
    events, meter, _ = await run({"main": [[("text", "Hel"), ("text", "lo")]]})
    assert events[:3] == [Usage(7, 0), TextDelta("Hel"), TextDelta("lo")]
    assert events[3] == Usage(7, 2)
    finish = events[4]
    assert isinstance(finish, Finish) and finish.reason == "stop" and finish.ttft_ms is not None
    assert len(events) == 5 and meter.model == "main"


@pytest.mark.parametrize(
    ("steps", "timeouts", "says"),
    [
        ([("sleep", 30), ("text", "late")], Timeouts(first_token_s=0.1), "no first token within 0.1 s"),
        ([("text", "a"), ("sleep", 30), ("text", "b")], Timeouts(idle_s=0.1), "no new token for 0.1 s"),
        (
            [step for _ in range(100) for step in (("text", "x"), ("sleep", 0.02))],
            Timeouts(idle_s=5, total_s=0.3),
            "longer than 0.3 s in total",
        ),
    ],
    ids=["first-token", "idle", "total"],
)
async def test_every_timeout_ends_the_stream_with_upstream_timeout_and_cancels_the_provider(
    steps: list[tuple[Any, ...]], timeouts: Timeouts, says: str
) -> None:
    started = time.monotonic()
    events, _, script = await run({"main": [steps]}, timeouts=timeouts)
    error = error_of(events)
    assert error.code == "upstream_timeout" and says in error.message
    assert script.cancelled == ["main"]
    assert time.monotonic() - started < 5


async def test_a_retryable_failure_before_the_first_token_is_retried_after_retry_after() -> None:
    plays = {"main": [[("fail", "rate_limited", 0.25)], [("text", "ok")]]}
    events, meter, script = await run(plays)
    assert text(events) == "ok" and reason(events) == "stop"
    first, second = script.attempts["main"]
    assert second - first >= 0.24  # Retry-After honoured, though the backoff alone is 0.01 s
    assert [e for e in events if isinstance(e, Usage)] == [Usage(7, 0), Usage(7, 1)]  # no trace of try 1
    assert meter.attempts == 2


async def test_backoff_doubles_between_retries() -> None:
    retry = RetryPolicy(retries=3, backoff_s=0.05, max_backoff_s=1)
    assert [retry.delay(n, None) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert retry.delay(0, 2.0) == 2.0
    assert RetryPolicy(backoff_s=1, max_backoff_s=3).delay(5, None) == 3


async def test_after_the_retries_the_fallbacks_are_tried_in_order() -> None:
    plays = {
        "main": [[("fail", "upstream_unavailable")]],
        "second": [[("fail", "upstream_error")]],
        "third": [[("text", "from third")]],
    }
    events, meter, script = await run(plays, fallbacks=("second", "third"))
    assert text(events) == "from third" and meter.model == "third"
    assert len(script.attempts["main"]) == 3 and len(script.attempts["second"]) == 3
    assert len(script.attempts["third"]) == 1


async def test_after_the_first_token_a_failure_is_an_error_event_never_a_switch() -> None:
    plays = {"main": [[("text", "partial"), ("fail", "upstream_error")]], "second": [[("text", "other")]]}
    events, _, script = await run(plays, fallbacks=("second",))
    assert text(events) == "partial"
    assert error_of(events).code == "upstream_error"
    assert "second" not in script.attempts and len(script.attempts["main"]) == 1


async def test_a_failure_that_is_not_retryable_goes_straight_to_the_client() -> None:
    plays = {"main": [[("fail", "invalid_request")]], "second": [[("text", "other")]]}
    events, _, script = await run(plays, fallbacks=("second",))
    assert error_of(events).code == "invalid_request"
    assert len(script.attempts["main"]) == 1 and "second" not in script.attempts


async def test_a_request_the_upstream_refused_is_not_sent_again_but_the_fallback_is_tried() -> None:
    plays = {"main": [[("refuse",)]], "second": [[("text", "other")]]}
    events, meter, script = await run(plays, fallbacks=("second",))
    assert len(script.attempts["main"]) == 1  # no retry: a 404 or a 400 comes back the same
    assert text(events) == "other" and meter.model == "second"
    events, _, script = await run({"main": [[("refuse",)]]})
    error = error_of(events)
    assert error.code == "upstream_error" and not error.retryable and len(script.attempts["main"]) == 1


async def test_when_every_candidate_fails_the_last_error_is_reported() -> None:
    plays = {"main": [[("fail", "upstream_unavailable")]], "second": [[("fail", "rate_limited", 0.01)]]}
    events, _, _ = await run(plays, fallbacks=("second",), retry=RetryPolicy(retries=0))
    assert error_of(events).code == "rate_limited"
    assert [e for e in events if isinstance(e, TextDelta)] == []


async def test_a_retry_after_beyond_the_first_token_deadline_skips_to_the_fallback() -> None:
    plays = {"main": [[("fail", "rate_limited", 30)]], "second": [[("text", "quick")]]}
    started = time.monotonic()
    events, _, script = await run(plays, fallbacks=("second",), timeouts=Timeouts(first_token_s=2))
    assert text(events) == "quick" and len(script.attempts["main"]) == 1
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("why", "ending"),
    [("stop", Finish("cancelled")), ("disconnect", Finish("cancelled")), ("shutdown", Finish("error"))],
)
async def test_a_cancelled_generation_logs_the_usage_so_far_and_why_it_ended(
    why: str, ending: Finish
) -> None:
    script = Script({"main": [[("text", "a"), ("text", "b"), ("sleep", 30)]]})
    log, meter = MemoryStreamLog("s"), Meter()
    task = asyncio.create_task(run_generation(ScriptedProvider("main", script), ask(), log, meter))
    await eventually(lambda: meter.deltas >= 2)
    task.cancel(why)
    await asyncio.wait_for(task, 10)
    events = [event async for batch in log.read() for _, event in batch or ()]
    assert reason(events) == ending.reason
    assert Usage(7, 2) in events and script.cancelled == ["main"]
    if why == "shutdown":
        assert error_of(events).code == "shutting_down"
    else:
        assert not [e for e in events if isinstance(e, ErrorEvent)]


async def test_cancel_during_a_retry_backoff_ends_at_once() -> None:
    script = Script({"main": [[("fail", "rate_limited", 30)]]})
    log, meter = MemoryStreamLog("s"), Meter()
    task = asyncio.create_task(
        run_generation(
            ScriptedProvider("main", script), ask(), log, meter, timeouts=Timeouts(first_token_s=0)
        )
    )
    await eventually(lambda: script.attempts.get("main"))
    await asyncio.sleep(0.02)
    task.cancel("stop")
    await asyncio.wait_for(task, 2)
    assert log.finished


async def test_first_sent_wakes_its_waiter_and_outlives_a_timed_out_wait() -> None:
    flag = FirstSent()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)  # the generation gives up waiting
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not flag.is_set() and not waiting.done()
    flag.set()
    await asyncio.wait_for(waiting, 1)
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)  # already set: returns at once


@pytest.mark.parametrize(
    ("max_tokens", "finish", "stop_sequence"), [(None, "stop", "c d"), (1, "length", None)]
)
async def test_the_stop_sequence_a_provider_met_reaches_the_logged_finish(
    max_tokens: int | None, finish: str, stop_sequence: str | None
) -> None:
    request = ChatRequest((Message("user", "a b c d e"),), "echo", max_tokens=max_tokens, stop=("c d",))
    log, meter = MemoryStreamLog("s"), Meter()
    await run_generation(EchoProvider(), request, log, meter)
    end = log.events[-1]
    assert isinstance(end, Finish) and end.ttft_ms is not None
    assert (end.reason, end.stop_sequence, meter.stop_sequence) == (finish, stop_sequence, stop_sequence)
