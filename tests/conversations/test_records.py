from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluiceway.conversations import Answer, StoredMessage, Turn, answer_from_events, derive_title
from sluiceway.conversations.records import Conversation, retried_from
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


def _turns(*pairs: tuple[str, str, str]) -> tuple[StoredMessage, ...]:
    """(question, answer, answer status) triples as stored messages, oldest first."""
    at = datetime(2025, 1, 1, tzinfo=UTC)
    found: list[StoredMessage] = []
    for i, (question, answer, status) in enumerate(pairs):
        found.append(StoredMessage(f"q{i}", "user", question, "complete", at))
        found.append(StoredMessage(f"a{i}", "assistant", answer, status, at))  # type: ignore[arg-type]
    return tuple(found)


@pytest.mark.parametrize(
    ("history", "question", "start"),
    [
        (_turns(("one", "uno", "complete"), ("two", "do", "error")), "two", 2),
        (_turns(("two", "", "error")), "two", 0),
        (_turns(("one", "uno", "complete"), ("two", "d", "cancelled")), "two", 2),
        (_turns(("one", "uno", "complete"), ("two", "", "streaming")), "two", 2),
        # the last turn answered: its retry never reached the store, so nothing is replaced
        (_turns(("two", "do", "complete")), "two", None),
        # the last turn asked something else: nothing is replaced
        (_turns(("one", "", "error")), "two", None),
        ((), "two", None),
    ],
)
def test_a_retry_replaces_only_the_same_unanswered_last_turn(
    history: tuple[StoredMessage, ...], question: str, start: int | None
) -> None:
    assert retried_from(history, question) == start
