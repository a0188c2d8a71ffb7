"""``/conversations``: list, read, rename and delete stored conversations; and the helpers that let
a chat route continue one (``conversation_id`` in its body). Shapes: docs/conversations.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sluiceway.conversations import Conversation, LazyRecorder, StoredMessage, Turn, TurnRecorder
from sluiceway.errors import InvalidRequestError, SluicewayError
from sluiceway.requests import Message
from sluiceway.server.auth import current_key
from sluiceway.server.routes._protocol import JSONRoute
from sluiceway.streams.hub import Stream

router = APIRouter(route_class=JSONRoute)

NEW = "new"
"""The ``conversation_id`` that starts a new conversation with the question."""
HEADER = "X-Conversation-Id"
RETRY = "retry"
"""The query parameter of a chat route that asks a conversation's last question again (``?retry=true``)."""
TITLE_MAX = 200


class NewConversation(BaseModel):
    """``POST /conversations`` body; without a title, the first question names the conversation."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=TITLE_MAX)


class TitleChange(BaseModel):
    """``PATCH /conversations/{id}`` body."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=TITLE_MAX)


def caller() -> str | None:
    """Whose conversations this request sees: its API key's name (``None`` when auth is off)."""
    key = current_key()
    return key.name if key is not None else None


async def get_recorder(request: Request) -> TurnRecorder:
    """FastAPI dependency: this app's conversation recorder (and, through it, the store), which the
    first request that needs it opens (``store_unavailable`` if it cannot)."""
    conversations: LazyRecorder = request.app.state.conversations
    return await conversations.get()


RecorderDep = Annotated[TurnRecorder, Depends(get_recorder)]


@router.post("/conversations", status_code=201)
async def create_conversation(recorder: RecorderDep, body: NewConversation | None = None) -> dict[str, Any]:
    """Start an empty conversation."""
    title = (body.title or "").strip() if body is not None else ""
    return conversation_json(await recorder.store.create(title or None, owner=caller()))


@router.get("/conversations")
async def list_conversations(
    recorder: RecorderDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Conversations, most recently active first; pass ``next_cursor`` back as ``cursor`` for more."""
    page = await recorder.store.page(limit, cursor, owner=caller())
    return {"data": [conversation_json(c) for c in page.conversations], "next_cursor": page.next_cursor}


@router.get("/conversations/{conversation_id}")
async def read_conversation(conversation_id: str, recorder: RecorderDep) -> dict[str, Any]:
    """One conversation with all its messages, oldest first."""
    conversation = await recorder.store.get(conversation_id, messages=True, owner=caller())
    return {**conversation_json(conversation), "messages": [message_json(m) for m in conversation.messages]}


@router.patch("/conversations/{conversation_id}")
async def rename_conversation(
    conversation_id: str, body: TitleChange, recorder: RecorderDep
) -> dict[str, Any]:
    """Set the title."""
    title = body.title.strip()
    if not title:
        raise InvalidRequestError("title must not be empty")
    return conversation_json(await recorder.store.rename(conversation_id, title, owner=caller()))


@router.delete("/conversations/{conversation_id}", status_code=204, response_class=Response)
async def delete_conversation(conversation_id: str, recorder: RecorderDep) -> Response:
    """Delete the conversation and its messages."""
    await recorder.store.delete(conversation_id, owner=caller())
    return Response(status_code=204)


async def begin_turn(http: Request, conversation_id: str, new: list[Message], model: str) -> Turn:
    """Store the question of a chat request that names ``conversation_id`` (``"new"`` starts one).

    ``new`` must be exactly one user message: the history comes from the store. With ``?retry=true``
    on the request the question replaces the conversation's last turn, if that turn asked the same
    and its answer did not complete (a Retry after a failure or a Stop).
    """
    if len(new) != 1 or new[0].role != "user":
        raise InvalidRequestError(
            "with conversation_id, send only the new user message ('message'); the history is stored"
        )
    retry = retry_requested(http)
    target = None if conversation_id == NEW else conversation_id
    recorder = await get_recorder(http)
    return await recorder.begin(target, new[0].content, model, owner=caller(), retry=retry)


def retry_requested(http: Request) -> bool:
    """Whether the chat request asks its question again (``?retry=true``, or ``1``/``false``/``0``).

    A query parameter rather than a body field, so that every chat route that continues
    conversations understands it the same way, whatever its body looks like."""
    value = http.query_params.get(RETRY)
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidRequestError(f"{RETRY}: must be true or false")


async def start_turn(http: Request, turn: Turn, start: Callable[[], Stream]) -> Stream:
    """Start generating the answer of ``turn`` with ``start`` (e.g. a ``start_stream`` partial) and
    record the answer when it ends; a failure to start is recorded too, then raised."""
    recorder = await get_recorder(http)
    try:
        stream = start()
    except SluicewayError as exc:
        await recorder.fail(turn, exc)
        raise
    recorder.follow(turn, stream)
    return stream


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """A conversation as the REST API shows it (without messages)."""
    return {
        "id": conversation.id,
        "title": conversation.title,
        "created_at": timestamp(conversation.created_at),
        "updated_at": timestamp(conversation.updated_at),
    }


def message_json(message: StoredMessage) -> dict[str, Any]:
    """A stored message as the REST API shows it; ``usage`` is ``null`` where nothing was counted."""
    usage = None
    if message.input_tokens is not None or message.output_tokens is not None:
        usage = {"input_tokens": message.input_tokens or 0, "output_tokens": message.output_tokens or 0}
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "model": message.model,
        "usage": usage,
        "ttft_ms": message.ttft_ms,
        "error_code": message.error_code,
        "created_at": timestamp(message.created_at),
        "finished_at": None if message.finished_at is None else timestamp(message.finished_at),
    }


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2025-05-01T12:00:00.123Z`` (what JavaScript parses)."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
