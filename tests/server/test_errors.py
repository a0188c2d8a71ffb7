"""Error shapes: which body answers a failure before the first byte, by path and header."""

from __future__ import annotations

from typing import Any

from sluiceway.events import ErrorEvent
from sluiceway.server.errors import ErrorShapes, seed_shape


def shaped(name: str) -> Any:
    return lambda error, status: {name: error.code}


def test_the_longest_prefix_wins_and_a_header_rule_only_with_its_header() -> None:
    shapes = ErrorShapes()
    openai, anthropic = shaped("openai"), shaped("anthropic")
    shapes.register("/v1/models", anthropic, header="Anthropic-Version")
    shapes.register("/v1/", openai)
    with_header = {"anthropic-version": "2023-06-01"}
    assert shapes.shape_for("/v1/models/echo", with_header) is anthropic
    assert shapes.shape_for("/v1/models/echo", {}) is openai
    assert shapes.shape_for("/v1/models") is openai
    assert shapes.shape_for("/v1/chat/completions", with_header) is openai
    assert shapes.shape_for("/chat/stream", with_header) is seed_shape
    assert seed_shape(ErrorEvent("overloaded", "busy", True, 2.0), 429) == {
        "error": {"code": "overloaded", "message": "busy", "retry_after": 2.0}
    }
