from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from sluiceway.conversations import database_url, open_store
from sluiceway.conversations.schema import MIGRATIONS, messages, schema_version
from sluiceway.providers.base import ModelConfig
from sluiceway.server.settings import Settings
from tests.conversations.postgres import database_for
from tests.live import LiveServer, live_server, make_settings
from tests.streams.redis_server import RedisServer

WORDS = " ".join(f"word{i}" for i in range(40))
MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-quick": ModelConfig("echo-quick", "echo", options={"delay_ms": 5}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3, "fail_code": "upstream_error"}),
    "echo-dead": ModelConfig("echo-dead", "echo", options={"fail_after": 0, "fail_code": "upstream_auth"}),
}
CONVERSATION_KEYS = {"id", "title", "created_at", "updated_at"}
MESSAGE_KEYS = {
    "id",
    "role",
    "content",
    "status",
    "model",
    "usage",
    "ttft_ms",
    "error_code",
    "created_at",
    "finished_at",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_for(request, tmp_path)


def settings_for(database: str, **overrides: Any) -> Settings:
    """Echo models only (the embedded one is not needed here), conversations in ``database``."""
    settings = make_settings(database_url=database, disconnect_grace_s=0, models=MODELS, **overrides)
    return replace(settings, models={k: v for k, v in settings.models.items() if k != "local"})


@pytest.fixture
def live(database: str) -> Iterator[LiveServer]:
    """A live server on each backend (for what the store's behaviour decides)."""
    with live_server(settings_for(database)) as server:
        yield server


@pytest.fixture
def api(tmp_path: Path) -> Iterator[LiveServer]:
    """A live server on SQLite only (for HTTP shapes and validation, alike on every backend)."""
    with live_server(settings_for(f"sqlite:///{tmp_path / 'c.db'}")) as server:
        yield server


def chat(server: LiveServer, **body: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST /chat/stream and read the whole answer; returns the response and its JSON events."""
    with httpx.stream("POST", f"{server.url}/chat/stream", json=body, timeout=30) as response:
        raw = response.read().decode()
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response, [json.loads(raw)]
    return response, sse_events(raw)


def sse_events(raw: str) -> list[dict[str, Any]]:
    found = []
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            found.append(json.loads(line[6:]))
    return found


def settled(server: LiveServer, conversation_id: str, deadline_s: float = 20.0) -> dict[str, Any]:
    """The conversation once no answer in it is still streaming (polled, bounded)."""
    deadline = time.monotonic() + deadline_s
    while True:
        body = httpx.get(f"{server.url}/conversations/{conversation_id}").json()
        if all(m["status"] != "streaming" for m in body["messages"]) or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def message_count(database: str, conversation_id: str) -> int:
    """Rows left in the messages table for ``conversation_id``, counted in the database itself."""

    async def count() -> int:
        store = await open_store(database_url(url=database))
        try:
            async with store.engine.connect() as conn:
                query = (
                    select(func.count())
                    .select_from(messages)
                    .where(messages.c.conversation_id == conversation_id)
                )
                return int(await conn.scalar(query) or 0)
        finally:
            await store.aclose()

    return asyncio.run(count())


def test_create_read_rename_delete(live: LiveServer) -> None:
    made = httpx.post(f"{live.url}/conversations", json={"title": "  Trip plans "})
    assert made.status_code == 201
    conversation = made.json()
    assert set(conversation) == CONVERSATION_KEYS and conversation["title"] == "Trip plans"
    assert conversation["created_at"].endswith("Z")
    untitled = httpx.post(f"{live.url}/conversations").json()
    assert untitled["title"] is None

    listed = httpx.get(f"{live.url}/conversations").json()
    assert listed == {"data": [untitled, conversation], "next_cursor": None}

    renamed = httpx.patch(f"{live.url}/conversations/{conversation['id']}", json={"title": "Rome"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Rome"
    read = httpx.get(f"{live.url}/conversations/{conversation['id']}").json()
    assert read == {**renamed.json(), "messages": []}

    assert httpx.delete(f"{live.url}/conversations/{conversation['id']}").status_code == 204
    gone = httpx.get(f"{live.url}/conversations/{conversation['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)],
)
def test_unknown_ids_are_404_in_the_seed_shape(api: LiveServer, method: str, body: Any) -> None:
    response = httpx.request(method, f"{api.url}/conversations/0123456789abcdef01234567", json=body)
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "no conversation '0123456789abcdef01234567'"}
    }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/conversations?limit=0", None),
        ("GET", "/conversations?limit=101", None),
        ("GET", "/conversations?cursor=garbage", None),
        ("POST", "/conversations", {"title": "x", "extra": 1}),
        ("PATCH", "/conversations/ID", {"title": "   "}),
        ("PATCH", "/conversations/ID", {}),
    ],
)
def test_bad_requests_are_400(api: LiveServer, method: str, path: str, body: Any) -> None:
    made = httpx.post(f"{api.url}/conversations").json()
    response = httpx.request(method, api.url + path.replace("ID", made["id"]), json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_pages_are_newest_first(api: LiveServer) -> None:
    made = [httpx.post(f"{api.url}/conversations", json={"title": f"c{i}"}).json()["id"] for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{api.url}/conversations", params=params).json()
        seen += [c["id"] for c in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None or pages > 5:
            break
    assert seen == made[::-1] and pages == 3


def test_a_new_conversation_from_the_chat_and_its_continuation(live: LiveServer) -> None:
    response, events = chat(live, conversation_id="new", message="one two three")
    assert response.status_code == 200
    conversation_id = response.headers["x-conversation-id"]
    assert "".join(e["text"] for e in events if e["type"] == "chunk") == "one two three"

    stored = settled(live, conversation_id)
    assert stored["title"] == "one two three"
    question, answer = stored["messages"]
    assert set(question) == set(answer) == MESSAGE_KEYS
    assert (question["role"], question["content"], question["status"]) == (
        "user",
        "one two three",
        "complete",
    )
    assert question["usage"] is None and question["model"] is None
    assert (answer["role"], answer["content"], answer["status"]) == ("assistant", "one two three", "complete")
    assert answer["model"] == "echo" and answer["usage"] == {"input_tokens": 3, "output_tokens": 3}
    assert answer["ttft_ms"] is not None and answer["error_code"] is None
    assert answer["finished_at"] >= answer["created_at"]

    response, events = chat(live, conversation_id=conversation_id, message="four five")
    assert response.headers["x-conversation-id"] == conversation_id
    done = next(e for e in events if e["type"] == "done")
    assert done["usage"]["input_tokens"] == 3 + 3 + 2  # the stored history reached the model
    stored = settled(live, conversation_id)
    assert [m["content"] for m in stored["messages"]] == [
        "one two three",
        "one two three",
        "four five",
        "four five",
    ]
    assert stored["title"] == "one two three"


def test_a_conversation_made_first_takes_its_title_from_the_first_question(api: LiveServer) -> None:
    made = httpx.post(f"{api.url}/conversations").json()
    chat(api, conversation_id=made["id"], message="What is a sluiceway, and who needs one at home?")
    listed = httpx.get(f"{api.url}/conversations").json()["data"]
    assert listed[0]["id"] == made["id"]
    assert listed[0]["title"] == "What is a sluiceway, and who needs one at home?"


@pytest.mark.parametrize(
    "body",
    [
        {
            "conversation_id": "new",
            "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        },
        {"conversation_id": "new", "messages": [{"role": "system", "content": "be brief"}]},
        {"conversation_id": "", "message": "hi"},
    ],
)
def test_a_conversation_takes_only_the_new_question(api: LiveServer, body: dict[str, Any]) -> None:
    response, _ = chat(api, **body)
    assert response.status_code == 400
    assert httpx.get(f"{api.url}/conversations").json()["data"] == []


def test_an_unknown_conversation_is_404_before_streaming(api: LiveServer) -> None:
    response, events = chat(api, conversation_id="0123456789abcdef01234567", message="hi")
    assert response.status_code == 404 and events[0]["error"]["code"] == "not_found"


def test_a_conversation_survives_a_restart(database: str) -> None:
    settings = settings_for(database)
    with live_server(settings) as first:
        response, _ = chat(first, conversation_id="new", message="remember me")
        conversation_id = response.headers["x-conversation-id"]
        before = settled(first, conversation_id)
    with live_server(settings) as second:
        assert settled(second, conversation_id) == before
        assert httpx.get(f"{second.url}/conversations").json()["data"][0]["id"] == conversation_id
        _, events = chat(second, conversation_id=conversation_id, message="and now")
        assert next(e for e in events if e["type"] == "done")["usage"]["input_tokens"] == 2 + 2 + 2
        assert len(settled(second, conversation_id)["messages"]) == 4


def test_a_cancelled_answer_is_stored_with_its_partial_text(live: LiveServer) -> None:
    body = {"conversation_id": "new", "message": WORDS, "model": "echo-slow"}
    chunks = 0
    with httpx.stream("POST", f"{live.url}/chat/stream", json=body, timeout=30) as response:
        conversation_id = response.headers["x-conversation-id"]
        for line in response.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 3:
                break  # the client goes away; the grace period is 0
    answer = settled(live, conversation_id)["messages"][-1]
    assert answer["status"] == "cancelled" and answer["error_code"] is None
    assert answer["content"].startswith("word0 word1 word2") and WORDS.startswith(answer["content"])
    assert len(answer["content"]) < len(WORDS)
    assert answer["model"] == "echo-slow" and answer["usage"]["output_tokens"] >= 3


def test_a_failed_answer_is_stored_with_its_partial_text_and_code(live: LiveServer) -> None:
    response, events = chat(live, conversation_id="new", message=WORDS, model="echo-fail")
    assert response.status_code == 200 and events[-1]["type"] == "error"
    answer = settled(live, response.headers["x-conversation-id"])["messages"][-1]
    assert (answer["status"], answer["error_code"]) == ("error", "upstream_error")
    assert answer["content"] == "word0 word1 word2 "


def test_an_answer_that_fails_before_its_first_word_is_stored(live: LiveServer) -> None:
    response, events = chat(live, conversation_id="new", message="hello there", model="echo-dead")
    assert response.status_code == 502 and events[0]["error"]["code"] == "upstream_auth"
    stored = settled(live, response.headers["x-conversation-id"])
    assert [(m["role"], m["status"], m["content"]) for m in stored["messages"]] == [
        ("user", "complete", "hello there"),
        ("assistant", "error", ""),
    ]
    assert stored["messages"][-1]["error_code"] == "upstream_auth"


def retry(server: LiveServer, **body: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST /chat/stream?retry=true (the page's Retry) and read the whole answer."""
    with httpx.stream("POST", f"{server.url}/chat/stream?retry=true", json=body, timeout=30) as response:
        raw = response.read().decode()
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response, [json.loads(raw)]
    return response, sse_events(raw)


def test_a_retry_replaces_the_failed_answer_and_its_question(live: LiveServer) -> None:
    response, _ = chat(live, conversation_id="new", message="one two")
    conversation_id = response.headers["x-conversation-id"]
    settled(live, conversation_id)
    response, events = chat(live, conversation_id=conversation_id, message=WORDS, model="echo-fail")
    assert events[-1]["type"] == "error"
    settled(live, conversation_id)
    response, events = retry(live, conversation_id=conversation_id, message=WORDS, model="echo-fail")
    assert response.headers["x-conversation-id"] == conversation_id and events[-1]["type"] == "error"
    stored = settled(live, conversation_id)["messages"]
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "error"),
    ]
    assert stored[-1]["content"] == "word0 word1 word2 "
    # the model saw the history once: not the question twice, nor the failed attempt's words
    assert stored[-1]["usage"]["input_tokens"] == 2 + 2 + 40


def test_a_retry_replaces_an_answer_that_failed_before_its_first_word(live: LiveServer) -> None:
    response, _ = chat(live, conversation_id="new", message="hello there", model="echo-dead")
    conversation_id = response.headers["x-conversation-id"]
    settled(live, conversation_id)
    response, events = retry(live, conversation_id=conversation_id, message="hello there")
    assert response.status_code == 200
    done = next(e for e in events if e["type"] == "done")
    assert done["usage"]["input_tokens"] == 2
    stored = settled(live, conversation_id)["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "hello there", "complete"),
        ("assistant", "hello there", "complete"),
    ]


def test_a_retry_replaces_a_stopped_answer(live: LiveServer) -> None:
    body = {"conversation_id": "new", "message": WORDS, "model": "echo-slow"}
    with httpx.stream("POST", f"{live.url}/chat/stream", json=body, timeout=30) as response:
        conversation_id = response.headers["x-conversation-id"]
        stream_id = response.headers["x-stream-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert httpx.post(f"{live.url}/chat/stream/{stream_id}/cancel").status_code < 300
                break
    settled(live, conversation_id)
    _, events = retry(live, conversation_id=conversation_id, message=WORDS, model="echo-quick")
    assert next(e for e in events if e["type"] == "done")["usage"]["input_tokens"] == 40
    stored = settled(live, conversation_id)["messages"]
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[-1]["content"] == WORDS


def test_a_retry_never_replaces_an_answered_turn(api: LiveServer) -> None:
    response, _ = chat(api, conversation_id="new", message="asked twice")
    conversation_id = response.headers["x-conversation-id"]
    settled(api, conversation_id)
    # e.g. the first attempt of this retry never reached the server: the question is a new turn
    _, events = retry(api, conversation_id=conversation_id, message="asked twice")
    assert next(e for e in events if e["type"] == "done")["usage"]["input_tokens"] == 2 + 2 + 2
    assert len(settled(api, conversation_id)["messages"]) == 4


@pytest.mark.parametrize("value", ["yes", ""])
def test_a_retry_flag_that_is_not_a_boolean_is_400(api: LiveServer, value: str) -> None:
    url = f"{api.url}/chat/stream?retry={value}"
    response = httpx.post(url, json={"conversation_id": "new", "message": "hi"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert httpx.get(f"{api.url}/conversations").json()["data"] == []


def test_answers_running_at_shutdown_are_stored(database: str) -> None:
    settings = settings_for(database, disconnect_policy="finish")
    body = {"conversation_id": "new", "message": WORDS, "model": "echo-slow"}
    with live_server(settings) as server:
        with httpx.stream("POST", f"{server.url}/chat/stream", json=body, timeout=30) as response:
            conversation_id = response.headers["x-conversation-id"]
            next(line for line in response.iter_lines() if line.startswith("data: "))
        assert server.call(lambda: server.state.hub.active) == 1  # still generating, nobody reading
    with live_server(settings) as restarted:
        answer = settled(restarted, conversation_id)["messages"][-1]
    assert (answer["status"], answer["error_code"]) == ("error", "shutting_down")
    assert answer["content"].startswith("word0") and len(answer["content"]) < len(WORDS)


def test_fifty_simultaneous_streams_lose_nothing(live: LiveServer) -> None:
    shared = httpx.post(f"{live.url}/conversations", json={"title": "shared"}).json()["id"]

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:

            async def one(i: int) -> str:
                target = shared if i % 2 else "new"
                body = {"conversation_id": target, "message": f"question {i} of fifty", "model": "echo-quick"}
                async with client.stream("POST", "/chat/stream", json=body) as response:
                    text = (await response.aread()).decode()
                    assert response.status_code == 200 and text.endswith("data: [DONE]\n\n")
                    return response.headers["x-conversation-id"]

            return await asyncio.gather(*(one(i) for i in range(50)))

    ids = asyncio.run(run())
    new_ids = {ids[i] for i in range(0, 50, 2)}
    assert len(new_ids) == 25 and shared not in new_ids
    for conversation_id in new_ids:
        question, answer = settled(live, conversation_id)["messages"]
        assert answer["status"] == "complete" and answer["content"] == question["content"]
    stored = settled(live, shared)["messages"]
    questions = sorted(m["content"] for m in stored if m["role"] == "user")
    answers = sorted(m["content"] for m in stored if m["role"] == "assistant")
    assert questions == answers == sorted(f"question {i} of fifty" for i in range(1, 50, 2))
    assert all(m["status"] == "complete" for m in stored)
    listed = httpx.get(f"{live.url}/conversations", params={"limit": 100}).json()
    assert len(listed["data"]) == 26 and listed["next_cursor"] is None


def test_deleting_a_conversation_removes_its_messages(live: LiveServer, database: str) -> None:
    kept, _ = chat(live, conversation_id="new", message="keep this")
    doomed, _ = chat(live, conversation_id="new", message="delete this")
    doomed_id = doomed.headers["x-conversation-id"]
    chat(live, conversation_id=doomed_id, message="and this")
    settled(live, doomed_id)
    assert message_count(database, doomed_id) == 4
    assert httpx.delete(f"{live.url}/conversations/{doomed_id}").status_code == 204
    assert message_count(database, doomed_id) == 0
    assert message_count(database, kept.headers["x-conversation-id"]) == 2
    assert httpx.get(f"{live.url}/conversations/{doomed_id}").status_code == 404


def test_answers_are_recorded_with_the_redis_stream_backend(redis_srv: RedisServer, tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite:///{tmp_path / 'c.db'}", redis_url=redis_srv.url, disconnect_policy="finish"
    )
    with live_server(settings) as server:
        done, _ = chat(server, conversation_id="new", message="a b c", model="echo-quick")
        complete_id = done.headers["x-conversation-id"]
        assert settled(server, complete_id)["messages"][-1]["content"] == "a b c"
        body = {"conversation_id": "new", "message": WORDS, "model": "echo-slow"}
        with httpx.stream("POST", f"{server.url}/chat/stream", json=body, timeout=30) as response:
            running_id = response.headers["x-conversation-id"]
            next(line for line in response.iter_lines() if line.startswith("data: "))
    with live_server(settings) as restarted:
        assert settled(restarted, complete_id)["messages"][-1]["status"] == "complete"
        answer = settled(restarted, running_id)["messages"][-1]
    assert (answer["status"], answer["error_code"]) == ("error", "shutting_down")
    assert answer["content"].startswith("word0") and len(answer["content"]) < len(WORDS)


def test_each_api_key_sees_only_its_own_conversations(tmp_path: Path) -> None:
    alice, bob = "sk-test-" + "a" * 24, "sk-test-" + "b" * 24
    keys = [{"key": alice, "name": "alice"}, {"key": bob, "name": "bob"}]
    settings = settings_for(f"sqlite:///{tmp_path / 'c.db'}", api_keys=keys)
    with live_server(settings) as server:
        as_alice = {"Authorization": f"Bearer {alice}"}
        as_bob = {"Authorization": f"Bearer {bob}"}
        assert httpx.get(f"{server.url}/conversations").status_code == 401
        body = {"conversation_id": "new", "message": "alice's secret"}
        with httpx.stream("POST", f"{server.url}/chat/stream", json=body, headers=as_alice) as response:
            response.read()
        mine = response.headers["x-conversation-id"]
        assert [
            c["id"] for c in httpx.get(f"{server.url}/conversations", headers=as_alice).json()["data"]
        ] == [mine]
        assert httpx.get(f"{server.url}/conversations", headers=as_bob).json()["data"] == []
        assert httpx.get(f"{server.url}/conversations/{mine}", headers=as_bob).status_code == 404
        assert httpx.delete(f"{server.url}/conversations/{mine}", headers=as_bob).status_code == 404
        body = {"conversation_id": mine, "message": "let me in"}
        assert httpx.post(f"{server.url}/chat/stream", json=body, headers=as_bob).status_code == 404
        assert len(httpx.get(f"{server.url}/conversations/{mine}", headers=as_alice).json()["messages"]) == 2


def test_a_store_that_cannot_open_leaves_streaming_working(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data directory should be")
    with live_server(settings_for(f"sqlite:///{blocker / 'data' / 'c.db'}")) as server:
        _, events = chat(server, message="a b c")
        assert events[-1]["type"] == "done"
        listed = httpx.get(f"{server.url}/conversations")
        assert (listed.status_code, listed.json()["error"]["code"]) == (503, "store_unavailable")
        response, events = chat(server, conversation_id="new", message="hi")
        assert (response.status_code, events[0]["error"]["code"]) == (503, "store_unavailable")
        blocker.unlink()  # the next request tries again
        assert httpx.get(f"{server.url}/conversations").json()["data"] == []


def test_a_database_from_a_newer_sluiceway_is_refused_on_first_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = f"sqlite:///{tmp_path / 'c.db'}"

    async def from_the_future() -> None:
        store = await open_store(database_url(url=database))
        async with store.engine.begin() as conn:
            await conn.execute(update(schema_version).values(version=len(MIGRATIONS) + 1))
        await store.aclose()

    asyncio.run(from_the_future())
    with (
        caplog.at_level(logging.ERROR, "sluiceway.conversations"),
        live_server(settings_for(database)) as server,
    ):
        _, events = chat(server, message="still streaming")
        assert events[-1]["type"] == "done"
        listed = httpx.get(f"{server.url}/conversations")
        assert (listed.status_code, listed.json()["error"]["code"]) == (503, "store_unavailable")
    assert any("upgrade" in r.getMessage() for r in caplog.records)
