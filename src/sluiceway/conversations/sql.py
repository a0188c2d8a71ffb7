"""Conversations in SQL through SQLAlchemy's async engine: SQLite (aiosqlite) or PostgreSQL (asyncpg).

How concurrency works: every method is one transaction. On SQLite the engine keeps a single
connection, so the writes of one process queue in order instead of fighting over the file lock; a
second process on the same file waits on the busy timeout, and WAL lets readers go on meanwhile.
SQLAlchemy emits ``BEGIN IMMEDIATE`` itself, because sqlite3's legacy mode leaves DDL and SELECTs
outside the transaction. On PostgreSQL a pool of connections runs under READ COMMITTED; a question
stored into a conversation deleted meanwhile fails on the foreign key and is reported as not found.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import platformdirs
from sqlalchemy import Row, and_, delete, event, func, insert, make_url, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sluiceway.conversations.records import (
    Answer,
    Conversation,
    ConversationPage,
    StoredMessage,
    Turn,
    derive_title,
    retried_from,
)
from sluiceway.conversations.schema import conversations, messages, migrate
from sluiceway.errors import ConversationNotFoundError, InvalidRequestError, StoreUnavailableError
from sluiceway.requests import Role

logger = logging.getLogger("sluiceway.conversations")

DATABASE_FILE = "sluiceway.db"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def default_data_dir() -> Path:
    """The user's data directory for sluiceway (e.g. ``~/.local/share/sluiceway`` on Linux)."""
    return Path(platformdirs.user_data_dir("sluiceway"))


def database_url(data_dir: str | Path | None = None, url: str | None = None) -> str:
    """The async SQLAlchemy URL for the settings: ``url`` if given, else SQLite in ``data_dir``.

    ``postgresql://`` (or ``postgres://``) becomes ``postgresql+asyncpg://``; ``sqlite://`` becomes
    ``sqlite+aiosqlite://``. Any other scheme is refused with a ``ValueError``.
    """
    if not url:
        directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
        return f"sqlite+aiosqlite:///{directory.absolute() / DATABASE_FILE}"
    scheme, sep, rest = url.partition("://")
    backend = scheme.split("+", 1)[0].lower()
    if sep and backend in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    if sep and backend == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(f"database URL must start with postgresql:// or sqlite://; got {scheme or url!r}")


def redacted(url: str) -> str:
    """``url`` with its password hidden, for logs."""
    return make_url(url).render_as_string(hide_password=True)


async def open_store(url: str) -> SqlConversationStore:
    """Connect to ``url`` (an async SQLAlchemy URL, see :func:`database_url`), migrate, return the store.

    A SQLite file's directory is created on first use.
    """
    try:
        engine = make_engine(url)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{exc}; PostgreSQL needs asyncpg: pip install 'sluiceway[postgres]'", name=exc.name
        ) from exc
    except OSError as exc:  # the SQLite file's directory cannot be made
        raise StoreUnavailableError(f"cannot open the conversation store {redacted(url)}: {exc}") from exc
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate)
    except (SQLAlchemyError, OSError) as exc:
        await engine.dispose()
        raise StoreUnavailableError(f"cannot open the conversation store {redacted(url)}: {exc}") from exc
    except BaseException:
        await engine.dispose()
        raise
    logger.info("conversations stored in %s", redacted(url))
    return SqlConversationStore(engine)


def make_engine(address: str) -> AsyncEngine:
    """An async engine for ``address`` set up as the store needs it (SQLite: one connection, WAL,
    foreign keys, transactional DDL; the file's directory created)."""
    url = make_url(address)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if url.database in (None, "", ":memory:"):
        engine = create_async_engine(url)
    else:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=60, connect_args={"timeout": 30}
        )
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _enable_wal(cursor)
        for pragma in ("synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any, within_s: float = 30.0) -> None:
    """Switch the file to WAL, giving way while another connection holds a lock.

    The first switch of a new file needs an exclusive lock. Waiting for it inside SQLite's busy
    handler can deadlock with a connection that is migrating (it waits for this one's shared lock to
    go, this one waits for its write lock), so the switch is tried with a short busy timeout and
    retried, releasing the shared lock in between, for up to ``within_s`` seconds.
    """
    cursor.execute("PRAGMA busy_timeout=50")
    deadline = time.monotonic() + within_s
    try:
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the aiosqlite worker thread, not the event loop
    finally:
        cursor.execute(f"PRAGMA busy_timeout={int(within_s * 1000)}")


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqlConversationStore:
    """A :class:`~sluiceway.conversations.store.ConversationStore` over one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, title: str | None = None, *, owner: str | None = None) -> Conversation:
        conversation_id, now = new_id(), now_us()
        async with self._transaction() as conn:
            await conn.execute(
                insert(conversations).values(_conversation_row(conversation_id, owner, title, now))
            )
        return Conversation(conversation_id, title, to_datetime(now), to_datetime(now))

    async def page(
        self, limit: int, cursor: str | None = None, *, owner: str | None = None
    ) -> ConversationPage:
        if limit < 1:
            raise InvalidRequestError("limit must be a positive integer")
        c = conversations.c
        query = (
            select(conversations)
            .where(c.owner == owner)
            .order_by(c.updated_at.desc(), c.id.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where(or_(c.updated_at < at, and_(c.updated_at == at, c.id < last_id)))
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
        found = tuple(_conversation(row) for row in rows[:limit])
        more = len(rows) > limit
        return ConversationPage(found, encode_cursor(found[-1]) if more else None)

    async def get(
        self, conversation_id: str, *, messages: bool = False, owner: str | None = None
    ) -> Conversation:
        async with self._transaction() as conn:
            conversation = await _load(conn, conversation_id, owner)
            if messages:
                conversation = replace(conversation, messages=await _messages(conn, conversation_id))
        return conversation

    async def rename(self, conversation_id: str, title: str, *, owner: str | None = None) -> Conversation:
        c = conversations.c
        query = update(conversations).where(c.id == conversation_id, c.owner == owner)
        async with self._transaction() as conn:
            await conn.execute(query.values(title=title, updated_at=now_us()))
            return await _load(conn, conversation_id, owner)

    async def delete(self, conversation_id: str, *, owner: str | None = None) -> None:
        c = conversations.c
        async with self._transaction() as conn:
            gone = await conn.execute(delete(conversations).where(c.id == conversation_id, c.owner == owner))
            if gone.rowcount == 0:
                raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
            await conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))

    async def begin_turn(
        self,
        conversation_id: str | None,
        question: str,
        model: str,
        *,
        owner: str | None = None,
        retry: bool = False,
    ) -> Turn:
        now = now_us()
        async with self._transaction() as conn:
            history: tuple[StoredMessage, ...] = ()
            if conversation_id is None:
                conversation_id = new_id()
                row = _conversation_row(conversation_id, owner, derive_title(question), now)
                await conn.execute(insert(conversations).values(row))
            else:
                await _load(conn, conversation_id, owner)
                history = await _messages(conn, conversation_id)
                if retry:
                    history = await _drop_retried(conn, history, question)
                await _touch(conn, conversation_id, now, derive_title(question))
            at = to_datetime(now)
            user = StoredMessage(new_id(), "user", question, "complete", at, finished_at=at)
            answer_id = new_id()
            rows = [
                _user_row(conversation_id, user, now),
                _answer_row(conversation_id, answer_id, model, now),
            ]
            try:
                await conn.execute(insert(messages), rows)
            except IntegrityError as exc:
                raise ConversationNotFoundError(f"conversation {conversation_id!r} was deleted") from exc
            conversation = await _load(conn, conversation_id, owner)
        return Turn(conversation, history, user, answer_id, model)

    async def finish_answer(self, answer_id: str, answer: Answer) -> bool:
        now = now_us()
        usage = answer.usage
        values = {
            "status": answer.status,
            "content": answer.content,
            "input_tokens": usage.input_tokens if usage is not None else None,
            "output_tokens": usage.output_tokens if usage is not None else None,
            "ttft_ms": answer.ttft_ms,
            "error_code": answer.error_code,
            "finished_at": now,
        }
        m = messages.c
        async with self._transaction() as conn:
            done = await conn.execute(
                update(messages).where(m.id == answer_id, m.status == "streaming").values(**values)
            )
            if done.rowcount == 0:
                return False
            parent = select(m.conversation_id).where(m.id == answer_id).scalar_subquery()
            await conn.execute(
                update(conversations).where(conversations.c.id == parent).values(updated_at=now)
            )
        return True

    async def aclose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; driver and pool failures leave here as :class:`StoreUnavailableError`."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("conversation store failed", exc_info=True)
            raise StoreUnavailableError("the conversation store is unavailable; try again") from exc


def new_id() -> str:
    """A fresh random id (24 hex digits) for a conversation or a message."""
    return secrets.token_hex(12)


def now_us() -> int:
    """Now, in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime (exactly)."""
    return EPOCH + timedelta(microseconds=us)


def to_us(moment: datetime) -> int:
    """An aware datetime as microseconds since the epoch (exactly)."""
    return (moment - EPOCH) // MICROSECOND


def encode_cursor(last: Conversation) -> str:
    """An opaque cursor pointing just after ``last`` in the newest-first order."""
    raw = f"{to_us(last.updated_at)}:{last.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The ``(updated_at, id)`` a cursor points after; a foreign cursor is an invalid request."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last_id = raw.split(":", 1)
        if not last_id.isalnum():
            raise ValueError(last_id)
        return int(at), last_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequestError("cursor: not a cursor this server gave out") from None


async def _load(conn: AsyncConnection, conversation_id: str, owner: str | None) -> Conversation:
    c = conversations.c
    row = (await conn.execute(select(conversations).where(c.id == conversation_id, c.owner == owner))).first()
    if row is None:
        raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
    return _conversation(row)


async def _messages(conn: AsyncConnection, conversation_id: str) -> tuple[StoredMessage, ...]:
    query = select(messages).where(messages.c.conversation_id == conversation_id).order_by(messages.c.seq)
    return tuple(_message(row) for row in await conn.execute(query))


async def _drop_retried(
    conn: AsyncConnection, history: tuple[StoredMessage, ...], question: str
) -> tuple[StoredMessage, ...]:
    """Delete the turn a retry of ``question`` replaces (see :func:`retried_from`); the history left."""
    start = retried_from(history, question)
    if start is None:
        return history
    await conn.execute(delete(messages).where(messages.c.id.in_([m.id for m in history[start:]])))
    return history[:start]


async def _touch(conn: AsyncConnection, conversation_id: str, now: int, title: str | None) -> None:
    """Mark the conversation active; give it ``title`` if it has none yet."""
    c = conversations.c
    values: dict[str, Any] = {"updated_at": now}
    if title is not None:
        values["title"] = func.coalesce(c.title, title)
    await conn.execute(update(conversations).where(c.id == conversation_id).values(values))


def _conversation_row(conversation_id: str, owner: str | None, title: str | None, now: int) -> dict[str, Any]:
    return {"id": conversation_id, "owner": owner, "title": title, "created_at": now, "updated_at": now}


def _user_row(conversation_id: str, user: StoredMessage, now: int) -> dict[str, Any]:
    return _message_row(conversation_id, user.id, "user", user.content, "complete", None, now, now)


def _answer_row(conversation_id: str, answer_id: str, model: str, now: int) -> dict[str, Any]:
    return _message_row(conversation_id, answer_id, "assistant", "", "streaming", model, now, None)


def _message_row(
    conversation_id: str,
    message_id: str,
    role: Role,
    content: str,
    status: str,
    model: str | None,
    created_at: int,
    finished_at: int | None,
) -> dict[str, Any]:
    """Every column of a new message (one multi-row insert needs the same keys in each row)."""
    return {
        "id": message_id,
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "status": status,
        "model": model,
        "input_tokens": None,
        "output_tokens": None,
        "ttft_ms": None,
        "error_code": None,
        "created_at": created_at,
        "finished_at": finished_at,
    }


def _conversation(row: Row[Any]) -> Conversation:
    return Conversation(row.id, row.title, to_datetime(row.created_at), to_datetime(row.updated_at))


def _message(row: Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        role=cast(Role, row.role),
        content=row.content,
        status=row.status,
        created_at=to_datetime(row.created_at),
        model=row.model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        ttft_ms=row.ttft_ms,
        error_code=row.error_code,
        finished_at=None if row.finished_at is None else to_datetime(row.finished_at),
    )
