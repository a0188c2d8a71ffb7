from __future__ import annotations

import asyncio

import pytest

from sluiceway.errors import UpstreamError
from sluiceway.events import Event, Finish, TextDelta, Usage
from sluiceway.providers.base import ModelConfig
from sluiceway.providers.echo import EchoProvider, create, cut_at_stop, split_words
from sluiceway.requests import Message, make_request


@pytest.mark.parametrize(
    "text", ["", "one", "Say hello", "  lead and trail  ", "a\n\nb\tc", "你好 世界 🙂", "x" * 1000]
)
def test_split_words_joins_back(text: str) -> None:
    assert "".join(split_words(text)) == text


def test_split_words_are_word_sized() -> None:
    assert split_words("Say hello  world") == ["Say ", "hello  ", "world"]


async def collect(provider: EchoProvider, text: str, **kw: object) -> list[Event]:
    request = make_request([Message("user", text)], "echo", **kw)
    return [e async for e in provider.stream(request)]


async def test_echo_streams_exact_text_and_usage() -> None:
    events = await collect(EchoProvider(), "Say hello world")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Say hello world"
    assert events[0] == Usage(3, 0)
    assert events[-2:] == [Usage(3, 3), Finish("stop")]


async def test_max_tokens_gives_length() -> None:
    events = await collect(EchoProvider(), "a b c d", max_tokens=2)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("a "), TextDelta("b ")]
    assert events[-1] == Finish("length")


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("a b c", [], ("a b c", None)),
        ("a b c", ["zzz"], ("a b c", None)),
        ("a b END c", ["END"], ("a b ", "END")),
        ("a b c d", ["b c"], ("a ", "b c")),  # across words
        ("hello world", ["wor"], ("hello ", "wor")),
        ("hello world", ["llo"], ("he", "llo")),  # inside a word
        ("a b c d", ["d", "b"], ("a ", "b")),  # the first place, whichever is listed first
        ("a b c d", ["b c", "b"], ("a ", "b")),  # at one place, the shorter (met first)
        ("STOP now", ["STOP"], ("", "STOP")),
        ("a b", ["", "b"], ("a ", "b")),  # an empty stop sequence is ignored
    ],
)
def test_cut_at_stop(text: str, stops: list[str], expected: tuple[str, str | None]) -> None:
    assert cut_at_stop(text, tuple(stops)) == expected


async def test_a_stop_sequence_ends_the_echo_with_stop_and_the_sequence() -> None:
    events = await collect(EchoProvider(), "one two. three four", stop=[". ", "four"])
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("one "), TextDelta("two")]
    assert events[-2:] == [Usage(4, 2), Finish("stop", stop_sequence=". ")]


async def test_max_tokens_before_the_stop_sequence_gives_length() -> None:
    events = await collect(EchoProvider(), "a b c d", stop="c", max_tokens=1)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("a ")]
    assert events[-1] == Finish("length")


async def test_fail_after() -> None:
    provider = create(ModelConfig("f", "echo", options={"fail_after": 1}))
    assert isinstance(provider, EchoProvider)
    with pytest.raises(UpstreamError):
        await collect(provider, "a b c")


async def test_delay_is_cancellable() -> None:
    provider = EchoProvider(delay_ms=50)
    seen: list[Event] = []
    first_text = asyncio.Event()

    async def run() -> None:
        async for event in provider.stream(make_request([Message("user", "a b c d e f")], "echo")):
            seen.append(event)
            if isinstance(event, TextDelta):
                first_text.set()

    task = asyncio.create_task(run())
    await asyncio.wait_for(first_text.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(isinstance(e, TextDelta) for e in seen) < 6
