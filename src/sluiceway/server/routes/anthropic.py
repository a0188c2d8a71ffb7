"""``POST /v1/messages``: the Anthropic Messages API (see :mod:`sluiceway.wire.anthropic`).

The ``anthropic-version`` and ``x-api-key`` headers the SDKs send are accepted and not checked.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from sluiceway.server.limits import InputNames
from sluiceway.server.relay import start_stream, stream_response
from sluiceway.server.routes._protocol import (
    answer_response,
    install_protocol,
    read_json,
    resolve,
)
from sluiceway.server.state import StateDep
from sluiceway.wire.anthropic import AnthropicEncoder, error_shape, message_body, parse_request

router = APIRouter()
ERROR_PREFIXES = ("/v1/messages",)
INPUT_NAMES = InputNames(message="messages.{i}.content", system="system")
"""Input limits name Anthropic's fields: the ``system`` prompt is no message, ``messages.0`` the first."""


def install(app: FastAPI) -> None:
    """Serve this protocol on ``app``; errors under its paths take Anthropic's shape."""
    install_protocol(app, router, ERROR_PREFIXES, error_shape)


@router.post(
    "/v1/messages",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def messages(http: Request, state: StateDep) -> Response:
    """A ``message`` object, or with ``"stream": true`` the Messages event stream."""
    params = parse_request(await read_json(http))
    request = resolve(state, params.request)
    stream = start_stream(state, request, protocol="anthropic", names=INPUT_NAMES)
    message_id = f"msg_{stream.stream_id}"
    if params.stream:
        return stream_response(http, state, stream, lambda s: AnthropicEncoder(message_id, request.model))
    return await answer_response(
        http,
        stream,
        lambda a: message_body(message_id, request.model, a.text, a.usage, a.finish, a.stop_sequence),
    )
