"""Conversations that survive restarts: every question and answer, stored as the generation ends.

SQLite in the data directory by default, PostgreSQL for several instances; see docs/conversations.md.
Importing this package does not import SQLAlchemy: the names that need it (the SQL store, the
migrations' error) load on first access, so a server that stores no conversation never pays for them.
"""

import typing as _typing

from sluiceway._lazy import lazy_exports as _lazy_exports
from sluiceway.conversations.records import (
    Answer,
    AnswerStatus,
    Conversation,
    ConversationPage,
    MessageStatus,
    StoredMessage,
    Turn,
    answer_from_events,
    derive_title,
)
from sluiceway.conversations.store import ConversationStore
from sluiceway.conversations.turns import LazyRecorder, TurnRecorder, open_conversations
from sluiceway.errors import ConversationNotFoundError, StoreUnavailableError

if _typing.TYPE_CHECKING:
    from sluiceway.conversations.schema import SchemaTooNewError
    from sluiceway.conversations.sql import SqlConversationStore, database_url, default_data_dir, open_store

_LAZY = {
    "SchemaTooNewError": "sluiceway.conversations.schema",
    "SqlConversationStore": "sluiceway.conversations.sql",
    "database_url": "sluiceway.conversations.sql",
    "default_data_dir": "sluiceway.conversations.sql",
    "open_store": "sluiceway.conversations.sql",
}

__all__ = [
    "Answer",
    "AnswerStatus",
    "Conversation",
    "ConversationNotFoundError",
    "ConversationPage",
    "ConversationStore",
    "LazyRecorder",
    "MessageStatus",
    "SchemaTooNewError",
    "SqlConversationStore",
    "StoreUnavailableError",
    "StoredMessage",
    "Turn",
    "TurnRecorder",
    "answer_from_events",
    "database_url",
    "default_data_dir",
    "derive_title",
    "open_conversations",
    "open_store",
]


__getattr__, __dir__ = _lazy_exports(__name__, _LAZY)
