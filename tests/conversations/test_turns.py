from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from sluiceway.conversations import (
    Answer,
    LazyRecorder,
    SqlConversationStore,
    StoredMessage,
    StoreUnavailableError,
    Turn,
    TurnRecorder,
    open_conversations,
)
from sluiceway.conversations import turns as turns_module
from sluiceway.errors import OverloadedError
from sluiceway.events import TextDelta
from sluiceway.providers.echo import EchoProvider
from sluiceway.requests import make_request
from sluiceway.streams.hub import HubSettings, Stream, StreamHub
from sluiceway.streams.log import MemoryStreamLog

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"


async def _answer(store: SqlConversationStore, turn: Turn) -> StoredMessage:
    return (await store.get(turn.conversation.id, messages=True)).messages[-1]


async def _start(
    hub: StreamHub, recorder: TurnRecorder, provider: EchoProvider, text: str
) -> tuple[Turn, Stream]:
    turn = await recorder.begin(None, text, "echo")
    stream = hub.start(provider, make_request(list(turn.prompt), "echo"))
    recorder.follow(turn, stream)
    return turn, stream


async def _wait_for_text(stream: Stream, pieces: int) -> None:
    seen = 0
    async with asyncio.timeout(20):
        async for batch in stream.log.read(0):
            seen += sum(isinstance(event, TextDelta) for _, event in batch or ())
            if seen >= pieces:
                return


async def test_a_complete_answer_is_recorded_with_nobody_reading(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(), TurnRecorder(store)
    turn, _ = await _start(hub, recorder, EchoProvider(), "one two three")
    await recorder.drain(20)
    answer = await _answer(store, turn)
    assert (answer.status, answer.content, answer.model) == ("complete", "one two three", "echo")
    assert (answer.input_tokens, answer.output_tokens) == (3, 3)
    assert answer.ttft_ms is not None and answer.finished_at is not None
    assert recorder.pending == 0
    await hub.aclose()


async def test_a_stopped_answer_keeps_its_partial_text(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(), TurnRecorder(store)
    turn, stream = await _start(hub, recorder, EchoProvider(delay_ms=30), WORDS)
    await _wait_for_text(stream, 2)
    stream.cancel("stop")
    await recorder.drain(20)
    answer = await _answer(store, turn)
    assert answer.status == "cancelled" and answer.error_code is None
    assert answer.content.startswith("alpha beta") and WORDS.startswith(answer.content)
    assert len(answer.content) < len(WORDS)
    assert answer.output_tokens == len(answer.content.split())
    await hub.aclose()


async def test_a_failed_answer_keeps_its_partial_text_and_code(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(), TurnRecorder(store)
    failing = EchoProvider(fail_after=3, fail_code="upstream_timeout")
    turn, _ = await _start(hub, recorder, failing, WORDS)
    await recorder.drain(20)
    answer = await _answer(store, turn)
    assert (answer.status, answer.content, answer.error_code) == (
        "error",
        "alpha beta gamma ",
        "upstream_timeout",
    )
    await hub.aclose()


async def test_shutdown_records_running_answers_with_their_text(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(HubSettings(disconnect_policy="finish")), TurnRecorder(store)
    started = [await _start(hub, recorder, EchoProvider(delay_ms=50), WORDS) for _ in range(3)]
    await _wait_for_text(started[-1][1], 1)
    await hub.aclose()
    await recorder.drain(20)
    for turn, _ in started:
        answer = await _answer(store, turn)
        assert (answer.status, answer.error_code) == ("error", "shutting_down")  # not the client's doing
        assert WORDS.startswith(answer.content) and len(answer.content) < len(WORDS)


async def test_an_answer_that_could_not_start_is_recorded(store: SqlConversationStore) -> None:
    recorder = TurnRecorder(store)
    turn = await recorder.begin(None, "hello", "echo")
    await recorder.fail(turn, OverloadedError("busy"))
    answer = await _answer(store, turn)
    assert (answer.status, answer.content, answer.error_code) == ("error", "", "overloaded")


async def test_a_generation_that_never_logs_its_end_is_an_internal_error(
    store: SqlConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turns_module, "FINISH_GRACE_S", 0.05)
    recorder = TurnRecorder(store)
    turn = await recorder.begin(None, "hello", "echo")
    log = MemoryStreamLog("broken")
    await log.append(TextDelta("half an ans"))
    stream = Stream("broken", log)
    stream.task = asyncio.create_task(asyncio.sleep(0))
    recorder.follow(turn, stream)
    await recorder.drain(20)
    answer = await _answer(store, turn)
    assert (answer.status, answer.content, answer.error_code) == ("error", "half an ans", "internal")


class FlakyStore:
    """The real store, whose first ``failures`` answer writes fail as if the database blinked."""

    def __init__(self, inner: SqlConversationStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def finish_answer(self, answer_id: str, answer: Answer) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("the database blinked")
        return await self.inner.finish_answer(answer_id, answer)


async def test_a_store_hiccup_is_retried(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(), TurnRecorder(FlakyStore(store, 2), retry_s=0.01)  # type: ignore[arg-type]
    turn, _ = await _start(hub, recorder, EchoProvider(), "still here")
    await recorder.drain(20)
    assert (await _answer(store, turn)).content == "still here"
    await hub.aclose()


async def test_aclose_waits_for_running_answers_then_closes_the_store(store: SqlConversationStore) -> None:
    hub, recorder = StreamHub(), TurnRecorder(store)
    turn, _ = await _start(hub, recorder, EchoProvider(delay_ms=20), "a b c d")
    await recorder.aclose()
    assert recorder.pending == 0
    reopened = SqlConversationStore(store.engine)  # a disposed engine connects again on demand
    answer = await _answer(reopened, turn)
    assert (answer.status, answer.content) == ("complete", "a b c d")
    await hub.aclose()


async def test_callers_arriving_together_open_one_store(tmp_path: Path) -> None:
    opened: list[TurnRecorder] = []
    entered, go = asyncio.Event(), asyncio.Event()

    async def open_recorder() -> TurnRecorder:
        entered.set()
        await go.wait()  # every caller has asked by now: they all wait for this one opening
        recorder = await open_conversations(tmp_path, None)
        opened.append(recorder)
        return recorder

    lazy = LazyRecorder(open_recorder)
    callers = [asyncio.create_task(lazy.get()) for _ in range(5)]
    await entered.wait()
    go.set()
    async with asyncio.timeout(20):
        got = await asyncio.gather(*callers)
    assert len(opened) == 1 and all(recorder is opened[0] for recorder in got)
    assert lazy.opened and await lazy.get() is opened[0]
    await lazy.aclose()


async def test_nothing_is_opened_until_asked(tmp_path: Path) -> None:
    lazy = LazyRecorder.for_settings(tmp_path / "data", None)
    assert not lazy.opened
    await lazy.aclose()
    assert not (tmp_path / "data").exists()
    with pytest.raises(StoreUnavailableError, match="shutting down"):
        await lazy.get()


async def test_the_store_opens_on_first_use_and_closes_with_the_recorder(tmp_path: Path) -> None:
    lazy = LazyRecorder.for_settings(tmp_path / "data", None)
    recorder = await lazy.get()
    turn = await recorder.begin(None, "kept", "echo")
    assert (tmp_path / "data" / "sluiceway.db").is_file()
    await lazy.aclose()
    assert not lazy.opened
    again = await open_conversations(tmp_path / "data", None)
    try:
        assert (await again.store.get(turn.conversation.id)).title == "kept"
    finally:
        await again.aclose()


async def test_a_store_that_cannot_open_is_unavailable_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data directory should be")
    lazy = LazyRecorder.for_settings(blocker / "data", None)
    with (
        caplog.at_level(logging.ERROR, "sluiceway.conversations"),
        pytest.raises(StoreUnavailableError) as caught,
    ):
        await lazy.get()
    assert "blocker" not in caught.value.message  # where the database is stays in the server log
    assert any("cannot open the conversation store" in r.getMessage() for r in caplog.records)
    assert not lazy.opened
    blocker.unlink()
    recorder = await lazy.get()
    assert (await recorder.store.page(10)).conversations == ()
    await lazy.aclose()
