"""``/healthz`` and the model list, in OpenAI's shape and (with ``anthropic-version``) Anthropic's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from tests.live import LiveServer, live_server, make_settings
from tests.server.protocol_support import MODELS

KEY = "sk-meta-all-" + "a" * 20
ECHO_ONLY = "sk-meta-echo-" + "e" * 20
ANTHROPIC = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    keys = [KEY, {"key": ECHO_ONLY, "name": "echo-only", "models": ["echo"]}]
    models = {**MODELS, "org/echo": ModelConfig("org/echo", "echo")}
    with live_server(make_settings(models=models, api_keys=keys)) as live:
        yield live


def get(srv: LiveServer, path: str, key: str = KEY, **headers: str) -> httpx.Response:
    return httpx.get(srv.url + path, headers={"Authorization": f"Bearer {key}", **headers})


def test_healthz_needs_no_key(srv: LiveServer) -> None:
    body = httpx.get(srv.url + "/healthz").json()
    assert body["status"] == "ok" and body["default_model"] == "echo"
    assert body["heartbeat_s"] == srv.state.settings.heartbeat_s == 15.0  # for sluiceway doctor


def test_healthz_answers_head_for_monitors(srv: LiveServer) -> None:
    head, get = httpx.head(srv.url + "/healthz"), httpx.get(srv.url + "/healthz")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == get.headers["content-length"]
    assert "/healthz" in httpx.get(srv.url + "/openapi.json").json()["paths"]  # documented once, as GET
    assert set(httpx.get(srv.url + "/openapi.json").json()["paths"]["/healthz"]) == {"get"}


def test_the_openai_list_puts_the_default_first(srv: LiveServer) -> None:
    body = get(srv, "/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == "echo" and {"echo-slow", "echo-fail"} <= set(ids)
    assert body["data"][0] == {
        "id": "echo",
        "object": "model",
        "created": body["data"][0]["created"],
        "owned_by": "echo",
    }
    assert len({m["created"] for m in body["data"]}) == 1


def test_one_openai_model_is_as_listed(srv: LiveServer) -> None:
    listed = {m["id"]: m for m in get(srv, "/v1/models").json()["data"]}
    for name in ("echo", "echo-slow", "org/echo"):
        r = get(srv, f"/v1/models/{name}")
        assert r.status_code == 200
        assert r.json() == listed[name]


@pytest.mark.parametrize(("path", "key"), [("/v1/models/nope", KEY), ("/v1/models/echo-slow", ECHO_ONLY)])
def test_an_unknown_or_forbidden_model_is_openais_404(srv: LiveServer, path: str, key: str) -> None:
    r = get(srv, path, key)
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_found",
        None,
    )
    assert "does not exist or you do not have access to it" in error["message"]


def test_the_anthropic_list_has_anthropics_shape_and_the_same_order(srv: LiveServer) -> None:
    openai_ids = [m["id"] for m in get(srv, "/v1/models").json()["data"]]
    body = get(srv, "/v1/models", **ANTHROPIC).json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert [m["id"] for m in body["data"]] == openai_ids
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, openai_ids[0], openai_ids[-1])
    first = body["data"][0]
    assert first["type"] == "model" and first["display_name"] == "echo"
    created = get(srv, "/v1/models").json()["data"][0]["created"]
    assert datetime.fromisoformat(first["created_at"]).timestamp() == created
    assert first["created_at"].endswith("Z")


def test_one_anthropic_model_is_as_listed(srv: LiveServer) -> None:
    listed = get(srv, "/v1/models", **ANTHROPIC).json()["data"]
    r = get(srv, "/v1/models/echo", **ANTHROPIC)
    assert r.status_code == 200 and r.json() == listed[0]


@pytest.mark.parametrize(("path", "key"), [("/v1/models/nope", KEY), ("/v1/models/echo-slow", ECHO_ONLY)])
def test_an_unknown_or_forbidden_model_is_anthropics_404(srv: LiveServer, path: str, key: str) -> None:
    r = get(srv, path, key, **ANTHROPIC)
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"


def test_a_key_sees_only_its_models_in_both_shapes(srv: LiveServer) -> None:
    assert [m["id"] for m in get(srv, "/v1/models", ECHO_ONLY).json()["data"]] == ["echo"]
    body = get(srv, "/v1/models", ECHO_ONLY, **ANTHROPIC).json()
    assert [m["id"] for m in body["data"]] == ["echo"] and body["first_id"] == body["last_id"] == "echo"
    assert get(srv, "/v1/models/echo", ECHO_ONLY).status_code == 200
