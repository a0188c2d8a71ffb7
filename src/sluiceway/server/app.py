"""The app factory: settings in, a FastAPI app out. No globals; everything hangs off ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sluiceway.conversations import LazyRecorder
from sluiceway.providers.registry import ProviderRegistry
from sluiceway.server.errors import ErrorShapes, install_handlers
from sluiceway.server.metrics import Metrics
from sluiceway.server.middleware import install_security
from sluiceway.server.models import ModelSet
from sluiceway.server.openapi import document_errors
from sluiceway.server.relay import open_hub
from sluiceway.server.request_log import RequestLogMiddleware
from sluiceway.server.responses import SluicewayApp
from sluiceway.server.routes import (
    aisdk,
    anthropic,
    conversations,
    meta,
    metrics,
    openai,
    seed,
    streams,
    web,
    websocket,
)
from sluiceway.server.routes._protocol import route_directly
from sluiceway.server.settings import Settings
from sluiceway.server.state import AppState
from sluiceway.streams.shutdown import ShutdownSignal


def create_app(
    settings: Settings, registry: ProviderRegistry | None = None, *, shutdown: ShutdownSignal | None = None
) -> FastAPI:
    """Build the server for ``settings``; models load when the app starts (lifespan).

    ``shutdown`` (triggered by ``sluiceway serve`` on SIGTERM) starts draining the streams: no new
    generation, ``shutdown_grace_s`` for the running ones, then ``shutting_down`` for the rest.
    """
    models = ModelSet(settings, registry or ProviderRegistry.from_entry_points())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recorder = LazyRecorder.for_settings(settings.data_dir, settings.database_url)  # opened on first use
        app.state.conversations = recorder
        if not models.providers:
            models.load()
        hub = await open_hub(settings, shutdown)
        hub.observer = app.state.metrics.stream_started
        app.state.sluiceway = AppState(settings, models, hub)
        try:
            yield
        finally:
            await hub.aclose()
            await recorder.aclose()  # after the hub: cancelled answers are recorded first
            await models.aclose()

    app = SluicewayApp(title="sluiceway", version="0.1.0", lifespan=lifespan)
    app.state.models = models
    app.state.error_shapes = ErrorShapes()
    app.state.metrics = Metrics.for_settings(settings)
    install_handlers(app)
    for router, endpoint in (  # first: the streaming POSTs skip FastAPI's router
        (openai.router, openai.chat_completions),
        (anthropic.router, anthropic.messages),
        (aisdk.router, aisdk.chat),
    ):
        route_directly(app, router, endpoint)
    meta.install(app)
    app.include_router(metrics.router)
    app.include_router(seed.router)
    app.include_router(streams.router)
    app.include_router(conversations.router)
    app.include_router(web.router)
    for protocol in (openai, anthropic, aisdk, websocket):
        protocol.install(app)
    install_security(app, settings)
    app.add_middleware(RequestLogMiddleware)
    document_errors(app)
    return app
