"""The tables, and the migrations that build them.

How migrations work: ``schema_version`` holds one row, the number of steps applied. On start-up
:func:`migrate` runs, in one transaction, every step of :data:`MIGRATIONS` after that number, in
order, and records the new number. On PostgreSQL an advisory lock makes instances starting at the
same time take turns; SQLite's write lock does the same. A database newer than this code is refused.
A step spells out its own DDL (it never uses the current tables below), so old databases replay the
same history as new ones.

Times are integers, microseconds since the Unix epoch (UTC): exact, ordered, alike on every backend.
``owner`` is the name of the API key that created a conversation (``NULL`` when auth is off); each
caller sees only its own.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)

Migration = Callable[[Connection], None]
ADVISORY_LOCK = 0x5175_1CE0  # "sluice": the key of the migration lock on PostgreSQL
SeqType = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(200)),
    Column("title", String(200)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_conversations_recent", "owner", "updated_at", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column(
        "conversation_id",
        String(32),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("model", String(200)),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("ttft_ms", Float),
    Column("error_code", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Index("ix_messages_conversation", "conversation_id", "seq"),
)


def _v1_conversations_and_messages(conn: Connection) -> None:
    """The first schema: conversations and their messages."""
    v1 = MetaData()
    Table(
        "conversations",
        v1,
        Column("id", String(32), primary_key=True),
        Column("owner", String(200)),
        Column("title", String(200)),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        Index("ix_conversations_recent", "owner", "updated_at", "id"),
    )
    Table(
        "messages",
        v1,
        Column("seq", SeqType, primary_key=True, autoincrement=True),
        Column("id", String(32), nullable=False, unique=True),
        Column(
            "conversation_id",
            String(32),
            ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("role", String(16), nullable=False),
        Column("content", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("model", String(200)),
        Column("input_tokens", Integer),
        Column("output_tokens", Integer),
        Column("ttft_ms", Float),
        Column("error_code", String(64)),
        Column("created_at", BigInteger, nullable=False),
        Column("finished_at", BigInteger),
        Index("ix_messages_conversation", "conversation_id", "seq"),
    )
    v1.create_all(conn)


MIGRATIONS: tuple[Migration, ...] = (_v1_conversations_and_messages,)
"""Every schema change, oldest first. Append; never edit or reorder a released step."""


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer sluiceway than this one."""


def migrate(conn: Connection, steps: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the schema up to date inside the caller's transaction; return the version reached."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    schema_version.create(conn, checkfirst=True)
    current = conn.scalar(select(schema_version.c.version))
    if current is None:
        conn.execute(insert(schema_version).values(version=0))
        current = 0
    if current > len(steps):
        raise SchemaTooNewError(
            f"the database schema is version {current}; this sluiceway knows up to {len(steps)}: upgrade it"
        )
    for step in steps[current:]:
        step(conn)
    if current < len(steps):
        conn.execute(update(schema_version).values(version=len(steps)))
    return len(steps)
