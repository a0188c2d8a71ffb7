"""What the routes of one app share, created by ``create_app`` and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from sluiceway.server.limits import KeyLimits
from sluiceway.server.models import ModelSet
from sluiceway.server.settings import Settings
from sluiceway.streams.hub import StreamHub


@dataclass(slots=True)
class AppState:
    """Settings, loaded models and live streams of one server."""

    settings: Settings
    models: ModelSet
    hub: StreamHub
    limits: KeyLimits = field(default_factory=KeyLimits)


async def get_state(request: Request) -> AppState:
    """FastAPI dependency: this app's :class:`AppState` (``async``: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop on every request)."""
    state: AppState = request.app.state.sluiceway
    return state


StateDep = Annotated[AppState, Depends(get_state)]
