"""``GET /metrics``: this server's Prometheus metrics (see :mod:`sluiceway.server.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from sluiceway.server.metrics import CONTENT_TYPE, Metrics

router = APIRouter()


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(http: Request) -> Response:
    """Time to first token, inter-token latency, tokens, active streams and generation ends."""
    registry: Metrics = http.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
