"""The app factory: settings in, a FastAPI app out. No globals; everything hangs off ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sluiceway.providers.registry import ProviderRegistry
from sluiceway.server.errors import ErrorShapes, install_handlers
from sluiceway.server.models import ModelSet
from sluiceway.server.routes import meta, seed
from sluiceway.server.settings import Settings
from sluiceway.server.state import AppState
from sluiceway.streams.hub import HubSettings, StreamHub


def create_app(settings: Settings, registry: ProviderRegistry | None = None) -> FastAPI:
    """Build the server for ``settings``; models load when the app starts (lifespan)."""
    models = ModelSet(settings, registry or ProviderRegistry.from_entry_points())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not models.providers:
            models.load()
        hub = StreamHub(
            HubSettings(
                disconnect_policy=settings.disconnect_policy,
                grace_s=settings.disconnect_grace_s,
                retention_s=settings.retention_s,
            )
        )
        app.state.sluiceway = AppState(settings, models, hub)
        try:
            yield
        finally:
            await hub.aclose()
            await models.aclose()

    app = FastAPI(title="sluiceway", version="0.1.0", lifespan=lifespan)
    app.state.models = models
    app.state.error_shapes = ErrorShapes()
    install_handlers(app)
    app.include_router(meta.router)
    app.include_router(seed.router)
    return app
