"""The sans-IO stream core: seed SSE bytes in (split anywhere), events out, resume decisions."""

from __future__ import annotations

from typing import Any

import pytest

from sluiceway.client._core import Accumulator, StreamCore, chat_core, events_from_payload, parse_event_id
from sluiceway.client._errors import ConnectionFailedError, StreamProtocolError
from sluiceway.client._types import HttpCall, chat_call
from sluiceway.errors import RateLimitedError, UnknownModelError, UpstreamError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.wire.seed import SeedEncoder

SSE = {"content-type": "text/event-stream; charset=utf-8", "x-stream-id": "s1"}
TEXTS = ["Héllo ", "wörld ", "✓ ", "🙂"]


def transcript(events: list[Event], stream_id: str = "s1") -> bytes:
    """What the server's own encoder sends for ``events`` (seq numbers from 1)."""
    encoder = SeedEncoder(stream_id)
    return encoder.start() + b"".join(encoder.encode(seq, ev) for seq, ev in enumerate(events, 1))


ANSWER: list[Event] = [
    Usage(3, 0),
    *[TextDelta(t) for t in TEXTS],
    Usage(3, 4),
    Finish("stop", ttft_ms=1.5, tokens_per_s=99.0),
]
EXPECTED: list[Event] = [*[TextDelta(t) for t in TEXTS], Usage(3, 4), Finish("stop", 1.5, 99.0)]


def fed(core: StreamCore, pieces: list[bytes]) -> list[Event]:
    assert core.accepts(200, SSE)
    events = [ev for piece in pieces for ev in core.feed(piece)]
    return events + list(core.end_of_body())


def test_a_whole_transcript_becomes_the_events_the_server_logged() -> None:
    core = StreamCore(chat_call("x"))
    assert fed(core, [transcript(ANSWER)]) == EXPECTED
    assert core.done and core.stream_id == "s1" and core.last_seq == 7


@pytest.mark.parametrize("cut", range(1, len(transcript(ANSWER))))
def test_every_split_point_gives_the_same_events(cut: int) -> None:
    data = transcript(ANSWER)
    assert fed(StreamCore(chat_call("x")), [data[:cut], data[cut:]]) == EXPECTED


def test_byte_by_byte_including_split_utf8() -> None:
    data = transcript(ANSWER)
    result = StreamCore(chat_call("x"))
    assert fed(result, [data[i : i + 1] for i in range(len(data))]) == EXPECTED
    assert result.result().text == "".join(TEXTS)


def test_crlf_framing_and_comments_are_understood() -> None:
    data = transcript(ANSWER).replace(b"\n", b"\r\n")
    assert fed(StreamCore(chat_call("x")), [b": ping\r\n\r\n", data]) == EXPECTED


def test_in_band_error_raises_after_the_text_before_it() -> None:
    error = ErrorEvent("upstream_error", "boom", True)
    events = [Usage(1, 0), TextDelta("a"), Usage(1, 1), error, Finish("error")]
    core = StreamCore(chat_call("x"))
    assert core.accepts(200, SSE)
    seen: list[Event] = []
    with pytest.raises(UpstreamError, match="boom") as info:
        seen.extend(core.feed(transcript(events)))
    assert seen == [TextDelta("a")]
    assert info.value.code == "upstream_error" and core.done
    assert core.result().text == "a"
    assert core.result().finish_reason == "error" and core.result().finish is None


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (lambda core: core.refusal(502, {}, b'{"error":{"code":"upstream_error","message":"x"}}'), "error"),
        (lambda core: core.cancelled(), "cancelled"),
    ],
)
def test_a_stream_ended_without_the_servers_finish_says_why(end: Any, reason: str) -> None:
    core = StreamCore(chat_call("x"))
    fed(core, [transcript(ANSWER[:2])])
    assert core.result().finish_reason is None  # still running
    end(core)
    assert core.result().finish_reason == reason and core.done


def test_giving_up_on_resume_ends_with_error() -> None:
    core = StreamCore(chat_call("x"), max_resumes=0)
    fed(core, [transcript(ANSWER[:2])])
    with pytest.raises(ConnectionFailedError):
        core.dropped(None)
    assert core.result().finish_reason == "error"


def test_cancel_after_the_finish_or_before_the_stream_changes_nothing() -> None:
    finished = StreamCore(chat_call("x"))
    fed(finished, [transcript(ANSWER)])
    finished.cancelled()
    assert finished.result().finish_reason == "stop"
    unstarted = StreamCore(chat_call("x"))
    unstarted.cancelled()
    assert unstarted.result().finish_reason is None


def test_rate_limited_in_band_carries_retry_after() -> None:
    with pytest.raises(RateLimitedError) as info:
        events_from_payload({"type": "error", "code": "rate_limited", "message": "slow", "retry_after": 2.5})
    assert info.value.retry_after == 2.5


def test_unknown_event_types_are_ignored() -> None:
    assert events_from_payload({"type": "reasoning", "text": "hm"}) == []


def test_non_json_data_is_a_protocol_error() -> None:
    core = StreamCore(chat_call("x"))
    core.accepts(200, SSE)
    with pytest.raises(StreamProtocolError):
        list(core.feed(b"data: <html>\n\n"))


@pytest.mark.parametrize(
    ("event_id", "parsed"),
    [
        ("abc:12", ("abc", 12)),
        ("a:b:3", ("a:b", 3)),
        (":4", (None, 4)),
        ("abc", (None, None)),
        (None, (None, None)),
    ],
)
def test_parse_event_id(event_id: str | None, parsed: tuple[str | None, int | None]) -> None:
    assert parse_event_id(event_id) == parsed


def test_a_drop_resumes_after_the_last_seq_and_skips_replayed_events() -> None:
    data = transcript(ANSWER)
    cut = data.index(b"id: s1:4")  # after the 2nd text (seq 3)
    core = StreamCore(chat_call("x"), max_resumes=2)
    first = fed(core, [data[:cut]])
    assert first == [TextDelta(TEXTS[0]), TextDelta(TEXTS[1])] and not core.done
    call = core.dropped(OSError("reset"))
    assert call == HttpCall("GET", "/chat/stream/s1", params={"after": "3"})
    rest = fed(core, [data])  # a server replaying everything: the old events are skipped
    assert first + rest == EXPECTED
    assert core.result().resumes == 1 and core.result().text == "".join(TEXTS)


def test_no_stream_id_means_no_resume() -> None:
    core = StreamCore(chat_call("x"))
    with pytest.raises(ConnectionFailedError, match="could not stream"):
        core.dropped(ConnectionRefusedError("refused"))


def test_resume_attempts_are_bounded_and_reset_by_progress() -> None:
    data = transcript(ANSWER)
    core = StreamCore(chat_call("x"), max_resumes=2)
    fed(core, [data[: data.index(b"id: s1:3")]])
    core.dropped(None)
    core.dropped(None)
    fed(core, [data[: data.index(b"id: s1:4")]])  # progress: seq 3 arrived
    core.dropped(None)
    core.dropped(None)
    with pytest.raises(ConnectionFailedError, match="2 resume attempts failed"):
        core.dropped(None)


def test_a_refused_resume_becomes_connection_failed() -> None:
    core = StreamCore(chat_call("x"))
    fed(core, [transcript(ANSWER[:2])])
    core.dropped(None)
    error = core.refusal(404, {}, b'{"error":{"code":"stream_not_found","message":"gone"}}')
    assert isinstance(error, ConnectionFailedError) and "gone" in str(error)


def test_a_resume_that_finds_the_answer_failed_raises_that_failure() -> None:
    core = StreamCore(chat_call("x"))
    fed(core, [transcript(ANSWER[:1])])
    core.dropped(None)
    error = core.refusal(502, {}, b'{"error":{"code":"upstream_error","message":"model crashed"}}')
    assert isinstance(error, UpstreamError) and error.message == "model crashed"


def test_a_refused_request_is_the_server_error() -> None:
    core = StreamCore(chat_call("x"))
    assert not core.accepts(404, {"content-type": "application/json"})
    error = core.refusal(404, {}, b'{"error":{"code":"unknown_model","message":"no such model"}}')
    assert isinstance(error, UnknownModelError) and error.message == "no such model"


def test_a_200_that_is_not_sse_is_a_protocol_error() -> None:
    core = StreamCore(chat_call("x"))
    assert not core.accepts(200, {"content-type": "text/html"})
    assert isinstance(core.refusal(200, {"content-type": "text/html"}, b"<html>"), StreamProtocolError)


def test_204_means_nothing_left() -> None:
    core = StreamCore(chat_call("x"))
    assert core.accepts(204, {}) and core.done


def test_accumulator_measures_ttft_and_tokens_per_second() -> None:
    acc = Accumulator(started=10.0)
    acc.add(TextDelta("a"), 10.1)
    acc.add(TextDelta("b"), 10.3)
    acc.add(TextDelta("c"), 10.5)
    acc.add(Usage(2, 3), 10.5)
    acc.add(Finish("stop"), 10.5)
    result = acc.result("s", 0)
    assert result.text == "abc" and result.finish_reason == "stop" and result.output_tokens == 3
    assert result.ttft_ms == pytest.approx(100.0)
    assert result.tokens_per_s == pytest.approx(5.0)


def test_clock_is_read_once_per_read_not_per_event() -> None:
    calls = []

    def clock() -> float:
        calls.append(1)
        return float(len(calls))

    core = StreamCore(chat_call("x"), clock=clock)
    fed(core, [transcript(ANSWER)])
    assert len(calls) == 2  # the start, then one read (flush completes no event)


def test_chat_core_starts_with_the_chat_call() -> None:
    core = chat_core("hi", max_resumes=2, model="echo", max_tokens=5, extra={"x": 1})
    assert core.call == chat_call("hi", model="echo", max_tokens=5, extra={"x": 1})
    assert core.max_resumes == 2 and core.stream_id is None and core.last_seq == 0
