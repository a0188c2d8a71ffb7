"""Conversations that survive restarts: every question and answer, stored as the generation ends.

SQLite in the data directory by default, PostgreSQL for several instances; see docs/conversations.md.
"""

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
from sluiceway.conversations.schema import SchemaTooNewError
from sluiceway.conversations.sql import SqlConversationStore, database_url, default_data_dir, open_store
from sluiceway.conversations.store import ConversationStore
from sluiceway.conversations.turns import TurnRecorder, open_conversations
from sluiceway.errors import ConversationNotFoundError, StoreUnavailableError

__all__ = [
    "Answer",
    "AnswerStatus",
    "Conversation",
    "ConversationNotFoundError",
    "ConversationPage",
    "ConversationStore",
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
