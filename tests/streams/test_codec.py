from __future__ import annotations

import pytest

from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.streams.codec import EVENT_OVERHEAD, dump_event, event_size, load_event

EVENTS: list[Event] = [
    TextDelta("Hel"),
    TextDelta(""),
    TextDelta('naïve "café" 東京 🚀\n\t\\'),
    Usage(0, 0),
    Usage(12, 345),
    Finish("stop"),
    Finish("cancelled", ttft_ms=12.5, tokens_per_s=80.25),
    Finish("error"),
    Finish("stop", stop_sequence="END"),
    Finish("stop", 3.5, 20.0, stop_sequence='naïve "é"\n'),
    ErrorEvent("upstream_timeout", "no first token within 60 s", True, None),
    ErrorEvent("rate_limited", "slow down", True, 2.5),
    ErrorEvent("internal", "ü", False),
]


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_every_event_survives_a_round_trip(event: Event) -> None:
    assert load_event(dump_event(event)) == event
    assert load_event(dump_event(event).encode()) == event


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (TextDelta("Hi"), '{"t":"x","v":"Hi"}'),
        (Usage(5, 2), '{"t":"u","i":5,"o":2}'),
        (Finish("stop"), '{"t": "f", "r": "stop", "ttft": null, "tps": null}'),
        (Finish("stop", stop_sequence="é"), '{"t": "f", "r": "stop", "ttft": null, "tps": null, "ss": "é"}'),
        (
            ErrorEvent("overloaded", "busy", True, 1.0),
            '{"t":"e","c":"overloaded","m":"busy","r":true,"ra":1.0}',
        ),
    ],
)
def test_events_are_compact_json(event: Event, data: str) -> None:
    assert dump_event(event) == data


@pytest.mark.parametrize("data", ['{"t":"?"}', '{"t":"f","r":"exploded"}', "[]", "{}"])
def test_anything_else_is_refused(data: str) -> None:
    with pytest.raises(ValueError):
        load_event(data)


def test_size_counts_text_plus_a_fixed_overhead() -> None:
    assert event_size(TextDelta("x" * 1000)) == EVENT_OVERHEAD + 1000
    assert event_size(Usage(1, 2)) == EVENT_OVERHEAD
    assert event_size(ErrorEvent("internal", "four")) == EVENT_OVERHEAD + 4
