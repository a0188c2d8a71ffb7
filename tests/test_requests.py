from __future__ import annotations

import pytest

from sluiceway.errors import InvalidRequestError
from sluiceway.requests import Message, make_message, make_request, text_content

USER = [Message("user", "hi")]


def test_make_request_defaults() -> None:
    req = make_request(USER, "echo")
    assert req.messages == tuple(USER) and req.max_tokens is None and req.stop == ()
    assert req.last_user_text == "hi"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens must be at most 2147483647"),
        ({"max_tokens": 2**64}, "max_tokens must be at most"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": 5}, "stop"),
    ],
)
def test_bad_limits_are_named(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        make_request(USER, "echo", **kwargs)


def test_empty_messages_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        make_request([], "echo")


@pytest.mark.parametrize(("role", "content"), [("robot", "x"), (None, "x"), ("user", 5)])
def test_bad_message(role: object, content: object) -> None:
    with pytest.raises(InvalidRequestError):
        make_message(role, content)


def test_stop_string_becomes_tuple() -> None:
    assert make_request(USER, "echo", stop="x").stop == ("x",)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("hi", "hi"), ([], ""), ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab")],
)
def test_text_content_joins_text_items(content: object, expected: str) -> None:
    assert text_content(content, "m", noun="parts", index="{where}[{i}]") == expected


@pytest.mark.parametrize(
    ("content", "noun", "index", "message"),
    [
        ([{"type": "image"}], "blocks", "{where}.{i}", "m.0: only text blocks are supported"),
        (["x"], "parts", "{where}[{i}]", "m[0]: only text parts are supported"),
        (None, "blocks", "{where}.{i}", "m: must be a string or an array of text blocks"),
        (5, "parts", "{where}[{i}]", "m: must be a string or an array of text parts"),
    ],
)
def test_text_content_names_the_bad_item(content: object, noun: str, index: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        text_content(content, "m", noun=noun, index=index)
    assert info.value.message == message


def test_text_content_optional_none_is_empty() -> None:
    assert text_content(None, "m", noun="parts", index="{where}[{i}]", optional=True) == ""
