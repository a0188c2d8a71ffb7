"""The seam between conversations and where they are kept."""

from __future__ import annotations

from typing import Protocol

from sluiceway.conversations.records import Answer, Conversation, ConversationPage, Turn


class ConversationStore(Protocol):
    """Durable conversations and their messages.

    Every method is one transaction. ``owner`` (the caller's API key name, ``None`` when auth is off)
    scopes every look-up: another owner's conversation is as unknown as a missing one. Unknown ids raise
    :class:`~sluiceway.errors.ConversationNotFoundError`; a database failure raises
    :class:`~sluiceway.errors.StoreUnavailableError`.
    """

    async def create(self, title: str | None = None, *, owner: str | None = None) -> Conversation:
        """Start an empty conversation (``title`` ``None``: taken from its first message)."""
        ...

    async def page(
        self, limit: int, cursor: str | None = None, *, owner: str | None = None
    ) -> ConversationPage:
        """Up to ``limit`` conversations, most recently active first, after ``cursor``."""
        ...

    async def get(
        self, conversation_id: str, *, messages: bool = False, owner: str | None = None
    ) -> Conversation:
        """One conversation, with its messages (oldest first) when ``messages`` is true."""
        ...

    async def rename(self, conversation_id: str, title: str, *, owner: str | None = None) -> Conversation:
        """Set the title."""
        ...

    async def delete(self, conversation_id: str, *, owner: str | None = None) -> None:
        """Delete the conversation and every message in it."""
        ...

    async def begin_turn(
        self,
        conversation_id: str | None,
        question: str,
        model: str,
        *,
        owner: str | None = None,
        retry: bool = False,
    ) -> Turn:
        """Store the user's ``question`` and a ``streaming`` answer placeholder for ``model``.

        ``conversation_id`` ``None`` starts a new conversation. With ``retry``, the last turn is
        deleted first if it asked the same question and its answer did not complete
        (:func:`~sluiceway.conversations.records.retried_from`). The returned turn holds the history
        before the question, read in the same transaction.
        """
        ...

    async def finish_answer(self, answer_id: str, answer: Answer) -> bool:
        """Write how the answer ended; ``False`` if it is gone (its conversation was deleted)."""
        ...

    async def aclose(self) -> None:
        """Release the database connections."""
        ...
