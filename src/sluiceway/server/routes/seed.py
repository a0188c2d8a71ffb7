"""``POST /chat/stream``: sluiceway's own SSE format (see :mod:`sluiceway.wire.seed`)."""

from __future__ import annotations

from functools import partial
from typing import Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sluiceway.errors import InvalidRequestError
from sluiceway.requests import Message, make_message, make_request
from sluiceway.server.relay import parse_event_id, start_stream, stream_response
from sluiceway.server.routes._protocol import JSONRoute
from sluiceway.server.routes.conversations import HEADER, begin_turn, start_turn
from sluiceway.server.routes.streams import resume_seed
from sluiceway.server.state import StateDep
from sluiceway.wire.seed import SeedEncoder

router = APIRouter(route_class=JSONRoute)


class ChatMessage(BaseModel):
    """One turn: ``role`` is system, user or assistant."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(BaseModel):
    """Either ``message`` (one user turn) or ``messages`` (the conversation).

    With ``conversation_id`` (an id, or ``"new"``) only ``message`` is sent: the history comes from the
    store, and the question and its answer are stored (docs/conversations.md).
    """

    message: str | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    disconnect: Literal["cancel", "finish"] | None = None
    disconnect_grace_s: float | None = Field(default=None, ge=0, le=3600)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=64)


@router.post(
    "/chat/stream",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def chat_stream(
    body: ChatBody, http: Request, state: StateDep, last_event_id: str | None = Header(default=None)
) -> Response:
    """Stream the answer as SSE: chunk events, a done event with usage, then ``[DONE]``.

    With ``Last-Event-ID: <stream>:<seq>`` (a fetch-based SSE client reconnecting) this resumes that
    stream after that event instead of starting a new generation (docs/streams.md).
    """
    if last_event_id:
        stream_id, after = parse_event_id(last_event_id)
        return await resume_seed(http, state, stream_id, after)
    messages: list[Message] = [make_message(m.role, m.content) for m in body.messages or []]
    if body.message is not None:
        messages.append(make_message("user", body.message))
    if not messages:
        raise InvalidRequestError("give 'message' (a string) or 'messages' (a non-empty list)")
    config, _ = state.models.resolve(body.model)
    turn = None
    if body.conversation_id is not None:
        turn = await begin_turn(http, body.conversation_id, messages, config.name)
        messages = list(turn.prompt)
    request = make_request(
        messages,
        config.name,
        max_tokens=state.models.cap_max_tokens(config, body.max_tokens),
        temperature=body.temperature,
    )
    start = partial(
        start_stream, state, request, body.disconnect, grace_s=body.disconnect_grace_s, protocol="seed"
    )
    stream = start() if turn is None else await start_turn(http, turn, start)
    response = stream_response(http, state, stream, lambda s: SeedEncoder(s.stream_id))
    if turn is not None:
        response.headers[HEADER] = turn.conversation.id
    return response
