"""``POST /v1/chat/completions``: the OpenAI Chat Completions API (see :mod:`sluiceway.wire.openai`)."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from sluiceway.server.relay import start_stream, stream_response
from sluiceway.server.routes._protocol import (
    answer_response,
    install_protocol,
    read_json,
    resolve,
)
from sluiceway.server.state import StateDep
from sluiceway.wire.openai import OpenAIEncoder, completion_body, error_shape, parse_request

router = APIRouter()
ERROR_PREFIXES = ("/v1/chat/completions", "/v1/models")


def install(app: FastAPI) -> None:
    """Serve this protocol on ``app``; errors under its paths take OpenAI's shape."""
    install_protocol(app, router, ERROR_PREFIXES, error_shape)


@router.post(
    "/v1/chat/completions",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def chat_completions(http: Request, state: StateDep) -> Response:
    """A ``chat.completion`` object, or with ``"stream": true`` a stream of ``chat.completion.chunk``."""
    params = parse_request(await read_json(http))
    request = resolve(state, params.request)
    stream = start_stream(state, request, protocol="openai")
    completion_id = f"chatcmpl-{stream.stream_id}"
    created = int(time.time())
    if params.stream:
        return stream_response(
            http,
            state,
            stream,
            lambda s: OpenAIEncoder(
                completion_id, created, request.model, include_usage=params.include_usage
            ),
        )
    return await answer_response(
        http,
        stream,
        lambda a: completion_body(completion_id, created, request.model, a.text, a.usage, a.finish),
    )
