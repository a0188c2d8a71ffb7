from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sluiceway.conversations import (
    Answer,
    ConversationNotFoundError,
    SqlConversationStore,
    StoreUnavailableError,
    database_url,
    open_store,
)
from sluiceway.conversations.schema import messages
from sluiceway.conversations.sql import decode_cursor, encode_cursor, to_datetime, to_us
from sluiceway.errors import InvalidRequestError
from sluiceway.events import Usage
from tests.live import free_port


@pytest.mark.parametrize(
    ("data_dir", "url", "expected"),
    [
        ("/srv/sw", None, "sqlite+aiosqlite:////srv/sw/sluiceway.db"),
        (None, "postgresql://u:p@db:5432/chat", "postgresql+asyncpg://u:p@db:5432/chat"),
        (None, "postgres://u@db/chat", "postgresql+asyncpg://u@db/chat"),
        (None, "postgresql+psycopg://u@db/chat", "postgresql+asyncpg://u@db/chat"),
        (None, "postgresql+asyncpg://u@db/chat?ssl=require", "postgresql+asyncpg://u@db/chat?ssl=require"),
        ("/ignored", "sqlite:////var/lib/c.db", "sqlite+aiosqlite:////var/lib/c.db"),
    ],
)
def test_database_url_from_settings(data_dir: str | None, url: str | None, expected: str) -> None:
    assert database_url(data_dir, url) == expected


def test_database_url_defaults_to_the_user_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert database_url() == f"sqlite+aiosqlite:///{tmp_path / 'sluiceway' / 'sluiceway.db'}"


@pytest.mark.parametrize("url", ["mysql://u@db/chat", "db.sqlite", "redis://localhost"])
def test_database_url_refuses_other_databases(url: str) -> None:
    with pytest.raises(ValueError, match="postgresql:// or sqlite://"):
        database_url(None, url)


async def test_data_dir_is_created_on_first_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "er"
    store = await open_store(database_url(data_dir))
    await store.aclose()
    assert (data_dir / "sluiceway.db").is_file()


async def test_a_data_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreUnavailableError, match="cannot open the conversation store"):
        await open_store(database_url(tmp_path / "a-file" / "data"))


async def test_unreachable_postgres_is_a_clear_error() -> None:
    url = database_url(url=f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none")
    with pytest.raises(StoreUnavailableError, match="cannot open the conversation store") as caught:
        await open_store(url)
    assert "secret" not in caught.value.message


def test_cursor_round_trip_and_foreign_cursors() -> None:
    moment = to_datetime(1_700_000_000_123_456)
    assert to_us(moment) == 1_700_000_000_123_456
    from sluiceway.conversations import Conversation

    cursor = encode_cursor(Conversation("abc123", None, moment, moment))
    assert decode_cursor(cursor) == (1_700_000_000_123_456, "abc123")
    for bad in ("", "!!!", "bm90LWEtY3Vyc29y", "MTIzOmE7ZHJvcCB0YWJsZQ"):
        with pytest.raises(InvalidRequestError):
            decode_cursor(bad)


async def test_create_and_get(store: SqlConversationStore) -> None:
    made = await store.create("Trip plans")
    got = await store.get(made.id, messages=True)
    assert (got.id, got.title, got.messages) == (made.id, "Trip plans", ())
    assert got.created_at == got.updated_at == made.created_at


async def test_unknown_ids_are_not_found(store: SqlConversationStore) -> None:
    for call in (
        store.get("nope"),
        store.rename("nope", "x"),
        store.delete("nope"),
        store.begin_turn("nope", "hi", "echo"),
    ):
        with pytest.raises(ConversationNotFoundError):
            await call


async def test_owners_see_only_their_own(store: SqlConversationStore) -> None:
    mine = await store.create("mine", owner="alice")
    theirs = await store.create("theirs", owner="bob")
    assert [c.id for c in (await store.page(10, owner="alice")).conversations] == [mine.id]
    assert [c.id for c in (await store.page(10)).conversations] == []
    for call in (
        store.get(theirs.id, owner="alice"),
        store.rename(theirs.id, "x", owner="alice"),
        store.delete(theirs.id, owner="alice"),
        store.begin_turn(theirs.id, "hi", "echo", owner="alice"),
    ):
        with pytest.raises(ConversationNotFoundError):
            await call
    assert (await store.get(theirs.id, owner="bob")).title == "theirs"


async def test_pages_newest_first_without_gaps_or_repeats(store: SqlConversationStore) -> None:
    made = [await store.create(f"c{i}") for i in range(7)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await store.page(3, cursor)
        seen.extend(c.id for c in page.conversations)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [c.id for c in reversed(made)]


async def test_activity_moves_a_conversation_to_the_top(store: SqlConversationStore) -> None:
    old, new = await store.create("old"), await store.create("new")
    assert [c.id for c in (await store.page(10)).conversations] == [new.id, old.id]
    await store.begin_turn(old.id, "back again", "echo")
    assert [c.id for c in (await store.page(10)).conversations] == [old.id, new.id]


async def test_rename(store: SqlConversationStore) -> None:
    made = await store.create()
    renamed = await store.rename(made.id, "Named")
    assert renamed.title == "Named" and renamed.updated_at >= made.updated_at


async def test_a_turn_stores_the_question_and_a_streaming_answer(store: SqlConversationStore) -> None:
    turn = await store.begin_turn(None, "  What is   the capital of France?  ", "echo")
    assert turn.conversation.title == "What is the capital of France?"
    assert turn.history == ()
    stored = (await store.get(turn.conversation.id, messages=True)).messages
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "streaming")]
    assert stored[0].content == "  What is   the capital of France?  "
    assert stored[1].id == turn.answer_id and stored[1].model == "echo" and stored[1].finished_at is None


async def test_history_is_the_stored_conversation(store: SqlConversationStore) -> None:
    first = await store.begin_turn(None, "one", "echo")
    await store.finish_answer(first.answer_id, Answer("complete", "uno", Usage(1, 1), 5.0))
    second = await store.begin_turn(first.conversation.id, "two", "echo")
    assert [(m.role, m.content) for m in second.history] == [("user", "one"), ("assistant", "uno")]
    assert [(m.role, m.content) for m in second.prompt] == [
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
    ]
    assert second.conversation.title == "one"


async def test_a_retry_replaces_the_failed_last_turn(store: SqlConversationStore) -> None:
    first = await store.begin_turn(None, "one", "echo")
    await store.finish_answer(first.answer_id, Answer("complete", "uno", Usage(1, 1), 5.0))
    failed = await store.begin_turn(first.conversation.id, "two", "echo")
    await store.finish_answer(failed.answer_id, Answer("error", "do", None, 3.0, "upstream_error"))
    retried = await store.begin_turn(first.conversation.id, "two", "echo", retry=True)
    assert [(m.role, m.content) for m in retried.prompt] == [
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
    ]
    stored = (await store.get(first.conversation.id, messages=True)).messages
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "one", "complete"),
        ("assistant", "uno", "complete"),
        ("user", "two", "complete"),
        ("assistant", "", "streaming"),
    ]
    assert stored[-1].id == retried.answer_id
    assert not await store.finish_answer(failed.answer_id, Answer("complete", "too late"))


async def test_a_retry_keeps_an_answered_last_turn(store: SqlConversationStore) -> None:
    first = await store.begin_turn(None, "one", "echo")
    await store.finish_answer(first.answer_id, Answer("complete", "uno"))
    again = await store.begin_turn(first.conversation.id, "one", "echo", retry=True)
    assert [m.content for m in again.history] == ["one", "uno"]
    assert len((await store.get(first.conversation.id, messages=True)).messages) == 4


async def test_a_titled_conversation_keeps_its_title(store: SqlConversationStore) -> None:
    made = await store.create("Mine")
    turn = await store.begin_turn(made.id, "something else entirely", "echo")
    assert turn.conversation.title == "Mine"


async def test_finish_answer_records_everything_once(store: SqlConversationStore) -> None:
    turn = await store.begin_turn(None, "hi", "echo")
    answer = Answer("error", "partial te", Usage(7, 3), 12.5, "upstream_error")
    assert await store.finish_answer(turn.answer_id, answer)
    assert not await store.finish_answer(turn.answer_id, Answer("complete", "other"))
    stored = (await store.get(turn.conversation.id, messages=True)).messages[-1]
    assert (stored.status, stored.content, stored.error_code) == ("error", "partial te", "upstream_error")
    assert (stored.input_tokens, stored.output_tokens, stored.ttft_ms) == (7, 3, 12.5)
    assert stored.finished_at is not None and stored.finished_at >= stored.created_at


async def test_delete_removes_the_messages(store: SqlConversationStore) -> None:
    keep = await store.begin_turn(None, "keep me", "echo")
    gone = await store.begin_turn(None, "delete me", "echo")
    await store.begin_turn(gone.conversation.id, "and me", "echo")
    await store.delete(gone.conversation.id)
    assert await _message_count(store, gone.conversation.id) == 0
    assert await _message_count(store, keep.conversation.id) == 2
    assert not await store.finish_answer(gone.answer_id, Answer("complete", "too late"))
    with pytest.raises(ConversationNotFoundError):
        await store.get(gone.conversation.id)


async def test_fifty_concurrent_turns_lose_nothing(store: SqlConversationStore) -> None:
    shared = await store.create("shared")

    async def turn(i: int) -> None:
        target = shared.id if i % 2 else None
        begun = await store.begin_turn(target, f"question {i}", "echo")
        await asyncio.sleep(0)
        assert await store.finish_answer(begun.answer_id, Answer("complete", f"answer {i}", Usage(2, 2)))

    await asyncio.gather(*(turn(i) for i in range(50)))
    stored = (await store.get(shared.id, messages=True)).messages
    assert sorted(m.content for m in stored if m.role == "user") == sorted(
        f"question {i}" for i in range(1, 50, 2)
    )
    assert sorted(m.content for m in stored if m.role == "assistant") == sorted(
        f"answer {i}" for i in range(1, 50, 2)
    )
    assert all(m.status == "complete" for m in stored)
    page = await store.page(100)
    assert len(page.conversations) == 26


async def _message_count(store: SqlConversationStore, conversation_id: str) -> int:
    async with store.engine.connect() as conn:
        query = (
            select(func.count()).select_from(messages).where(messages.c.conversation_id == conversation_id)
        )
        return int(await conn.scalar(query) or 0)
