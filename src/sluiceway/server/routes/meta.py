"""Liveness and the model list."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from sluiceway.server.auth import current_key
from sluiceway.server.state import StateDep

router = APIRouter()
_STARTED = int(time.time())


@router.get("/healthz")
async def healthz(state: StateDep) -> dict[str, Any]:
    """Liveness, the models loaded and those that failed to load."""
    return {
        "status": "ok",
        "default_model": state.models.default,
        "models": sorted(state.models.providers),
        "unavailable": state.models.unavailable,
        "active_streams": state.hub.active,
    }


@router.get("/v1/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    """The served models in OpenAI's list shape; the default model comes first.

    A caller whose API key may use only some models sees only those.
    """
    key = current_key()
    names = [
        n
        for n in state.settings.model_names()
        if n in state.models.providers and (key is None or key.allows(n))
    ]
    if state.models.default in names:
        names.remove(state.models.default)
        names.insert(0, state.models.default)
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": _STARTED,
                "owned_by": state.models.configs[name].provider,
            }
            for name in names
        ],
    }
