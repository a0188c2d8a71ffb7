"""``POST /chat/stream``: sluiceway's own SSE format (see :mod:`sluiceway.wire.seed`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sluiceway.errors import InvalidRequestError
from sluiceway.requests import Message, make_message, make_request
from sluiceway.server.relay import start_stream, stream_response
from sluiceway.server.state import StateDep
from sluiceway.wire.seed import SeedEncoder

router = APIRouter()


class ChatMessage(BaseModel):
    """One turn: ``role`` is system, user or assistant."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(BaseModel):
    """Either ``message`` (one user turn) or ``messages`` (the conversation)."""

    message: str | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    disconnect: Literal["cancel", "finish"] | None = None


@router.post(
    "/chat/stream",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def chat_stream(body: ChatBody, http: Request, state: StateDep) -> Response:
    """Stream the answer as SSE: chunk events, a done event with usage, then ``[DONE]``."""
    messages: list[Message] = [make_message(m.role, m.content) for m in body.messages or []]
    if body.message is not None:
        messages.append(make_message("user", body.message))
    if not messages:
        raise InvalidRequestError("give 'message' (a string) or 'messages' (a non-empty list)")
    config, _ = state.models.resolve(body.model)
    request = make_request(
        messages,
        config.name,
        max_tokens=state.models.cap_max_tokens(config, body.max_tokens),
        temperature=body.temperature,
    )
    stream = start_stream(state, request, body.disconnect)
    return await stream_response(http, state, stream, lambda s: SeedEncoder(s.stream_id))
