"""Liveness and the model list, in OpenAI's shape or, for a caller that sends ``anthropic-version``
(the anthropic SDKs always do), in Anthropic's: its errors too (a 401 from the auth layer, a 404
for a model that is not served), through the app's error shapes (:func:`install`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from sluiceway.errors import UnknownModelError
from sluiceway.server.auth import current_key
from sluiceway.server.state import AppState, StateDep
from sluiceway.wire import anthropic as anthropic_wire

router = APIRouter()
ANTHROPIC_HEADER = "anthropic-version"
_STARTED = int(time.time())
_STARTED_AT = datetime.fromtimestamp(_STARTED, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
"""When the models were ``created``, for the lists: when this process started (RFC 3339 for Anthropic)."""


def install(app: FastAPI) -> None:
    """Serve these routes on ``app``; errors under ``/v1/models`` take Anthropic's shape for a caller
    that sends ``anthropic-version`` (the prefix's default shape, OpenAI's, is the openai route's)."""
    app.include_router(router)
    app.router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)  # monitors
    app.state.error_shapes.register("/v1/models", anthropic_wire.error_shape, header=ANTHROPIC_HEADER)


@router.get("/healthz")
async def healthz(state: StateDep) -> dict[str, Any]:
    """Liveness, the models loaded and those that failed to load, and the heartbeat interval (which
    ``sluiceway doctor`` judges heartbeats by; not a secret: every quiet stream shows it)."""
    return {
        "status": "ok",
        "heartbeat_s": state.settings.heartbeat_s,
        "default_model": state.models.default,
        "models": sorted(state.models.providers),
        "unavailable": state.models.unavailable,
        "active_streams": state.hub.active,
    }


@router.get("/v1/models")
async def list_models(http: Request, state: StateDep) -> dict[str, Any]:
    """The served models; the default model comes first.

    A caller whose API key may use only some models sees only those. With an ``anthropic-version``
    header the list takes Anthropic's shape (one page: ``has_more`` is false).
    """
    names = served_models(state)
    if _wants_anthropic(http):
        return {
            "data": [anthropic_model(name) for name in names],
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    return {"object": "list", "data": [openai_model(state, name) for name in names]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, http: Request, state: StateDep) -> Any:
    """One served model, as in the list; 404 for a model that is not served or that the caller's
    API key may not use (OpenAI's ``model_not_found``, or Anthropic's ``not_found_error``)."""
    if model_id not in served_models(state):
        raise UnknownModelError(f"the model {model_id!r} does not exist or you do not have access to it")
    return anthropic_model(model_id) if _wants_anthropic(http) else openai_model(state, model_id)


def served_models(state: AppState) -> list[str]:
    """The loaded models the caller's API key may use, in configuration order, the default first."""
    key = current_key()
    names = [
        n
        for n in state.settings.model_names()
        if n in state.models.providers and (key is None or key.allows(n))
    ]
    if state.models.default in names:
        names.remove(state.models.default)
        names.insert(0, state.models.default)
    return names


def openai_model(state: AppState, name: str) -> dict[str, Any]:
    """One model in OpenAI's shape (``owned_by``: its provider kind)."""
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": state.models.configs[name].provider,
    }


def anthropic_model(name: str) -> dict[str, Any]:
    """One model in Anthropic's shape (the name is also its display name)."""
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": _STARTED_AT,
        "lifecycle": "active",
    }


def _wants_anthropic(http: Request) -> bool:
    return ANTHROPIC_HEADER in http.headers
