"""``POST /api/chat``: the Vercel AI SDK UI-message stream (see :mod:`sluiceway.wire.aisdk`)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from sluiceway.server.relay import start_stream, stream_response
from sluiceway.server.routes._protocol import read_json, resolve
from sluiceway.server.routes.streams import chat_key
from sluiceway.server.state import StateDep
from sluiceway.wire.aisdk import UIMessageStreamEncoder, parse_request

router = APIRouter()


def install(app: FastAPI) -> None:
    """Serve this protocol on ``app`` (its errors keep sluiceway's own JSON shape)."""
    app.include_router(router)


@router.post("/api/chat", response_class=Response, responses={200: {"content": {"text/event-stream": {}}}})
async def chat(http: Request, state: StateDep) -> Response:
    """Answer a ``useChat`` request with the UI-message stream."""
    params = parse_request(await read_json(http))
    request = resolve(state, params.request)
    key = None if params.chat_id is None else chat_key(params.chat_id)  # for GET /api/chat/{id}/stream
    stream = start_stream(state, request, key=key, protocol="aisdk")
    message_id = f"msg-{stream.stream_id}"
    return stream_response(http, state, stream, lambda s: UIMessageStreamEncoder(message_id, request.model))
