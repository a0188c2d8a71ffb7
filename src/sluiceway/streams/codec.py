"""Events as compact JSON, for logs kept outside the process (Redis), and their size in memory.

The mapping is total over :data:`sluiceway.events.Event`; ``load_event(dump_event(e)) == e``.
"""

from __future__ import annotations

import json
from typing import Any

from sluiceway.events import FINISH_REASONS, ErrorEvent, Event, Finish, TextDelta, Usage

EVENT_OVERHEAD = 96
"""Approximate bytes one logged event costs beyond its text (object headers, list slot, seq)."""


def dump_event(event: Event) -> str:
    """One event as a JSON object string."""
    match event:
        case TextDelta(text):
            return json.dumps({"t": "x", "v": text}, ensure_ascii=False, separators=(",", ":"))
        case Usage(input_tokens, output_tokens):
            return f'{{"t":"u","i":{input_tokens},"o":{output_tokens}}}'
        case Finish(reason, ttft_ms, tokens_per_s, stop_sequence):
            end: dict[str, Any] = {"t": "f", "r": reason, "ttft": ttft_ms, "tps": tokens_per_s}
            if stop_sequence is not None:
                end["ss"] = stop_sequence
            return json.dumps(end, ensure_ascii=False)
        case ErrorEvent(code, message, retryable, retry_after):
            body = {"t": "e", "c": code, "m": message, "r": retryable, "ra": retry_after}
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    raise AssertionError(f"unhandled event {event!r}")


def load_event(data: str | bytes) -> Event:
    """The event :func:`dump_event` wrote (raises ``ValueError`` on anything else)."""
    obj: Any = json.loads(data)
    kind = obj.get("t") if isinstance(obj, dict) else None
    if kind == "x":
        return TextDelta(str(obj["v"]))
    if kind == "u":
        return Usage(int(obj["i"]), int(obj["o"]))
    if kind == "f" and obj["r"] in FINISH_REASONS:
        stop = obj.get("ss")
        return Finish(obj["r"], obj.get("ttft"), obj.get("tps"), None if stop is None else str(stop))
    if kind == "e":
        return ErrorEvent(str(obj["c"]), str(obj["m"]), bool(obj.get("r")), obj.get("ra"))
    raise ValueError(f"not a logged event: {obj!r}")


def event_size(event: Event) -> int:
    """Bytes ``event`` costs in a log: its text plus a fixed overhead (what ``max_stream_bytes`` counts)."""
    if isinstance(event, TextDelta):
        return EVENT_OVERHEAD + len(event.text)
    if isinstance(event, ErrorEvent):
        return EVENT_OVERHEAD + len(event.message)
    return EVENT_OVERHEAD
