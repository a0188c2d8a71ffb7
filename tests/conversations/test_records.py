from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluiceway.conversations import Answer, StoredMessage, Turn, answer_from_events, derive_title
from sluiceway.conversations.records import Conversation
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import Message

LONG = "Please explain how the tides work and why there are two of them every single day"


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Hello", "Hello"),
        ("  several   spaces\nand lines  ", "several spaces and lines"),
        ("", None),
        ("   \n ", None),
        ("x" * 60, "x" * 60),
        (LONG, "Please explain how the tides work and why there are two of…"),
        ("y" * 100, "y" * 59 + "…"),
    ],
)
def test_derive_title(text: str, title: str | None) -> None:
    assert derive_title(text) == title
    if title is not None:
        assert len(title) <= 60


@pytest.mark.parametrize(
    ("events", "answer"),
    [
        (
            [Usage(4, 0), TextDelta("Hel"), TextDelta("lo"), Usage(4, 2), Finish("stop", 12.5, 80.0)],
            Answer("complete", "Hello", Usage(4, 2), 12.5),
        ),
        ([TextDelta("cut"), Finish("length", 3.0)], Answer("complete", "cut", None, 3.0)),
        (
            [Usage(4, 0), TextDelta("par"), Usage(4, 1), Finish("cancelled", 9.0)],
            Answer("cancelled", "par", Usage(4, 1), 9.0),
        ),
        (
            [
                TextDelta("a "),
                TextDelta("b"),
                Usage(3, 2),
                ErrorEvent("upstream_error", "boom", True),
                Finish("error", 1.0),
            ],
            Answer("error", "a b", Usage(3, 2), 1.0, "upstream_error"),
        ),
        (
            [Usage(3, 0), ErrorEvent("overloaded", "busy"), Finish("error")],
            Answer("error", "", Usage(3, 0), None, "overloaded"),
        ),
        ([Finish("error")], Answer("error", "", None, None, "internal")),
        ([TextDelta("no end")], Answer("error", "no end", None, None, "internal")),
        ([], Answer("error", "", None, None, "internal")),
    ],
)
def test_answer_from_events(events: list[Event], answer: Answer) -> None:
    assert answer_from_events(events) == answer


def test_prompt_skips_answers_without_text() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)

    def message(role: str, content: str, status: str = "complete") -> StoredMessage:
        return StoredMessage(f"{role}{content}", role, content, status, at)  # type: ignore[arg-type]

    history = (
        message("user", "one"),
        message("assistant", "", "error"),
        message("user", "two"),
        message("assistant", "partial", "cancelled"),
        message("user", ""),
        message("assistant", "", "streaming"),
    )
    turn = Turn(Conversation("c", None, at, at), history, message("user", "three"), "a", "echo")
    assert turn.prompt == (
        Message("user", "one"),
        Message("user", "two"),
        Message("assistant", "partial"),
        Message("user", ""),
        Message("user", "three"),
    )
