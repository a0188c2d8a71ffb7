"""The official ``anthropic`` Python SDK, unmodified, against a live sluiceway (echo; local if installed)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import anthropic
import pytest

from tests.live import LiveServer
from tests.server.protocol_support import protocol_server

pytestmark = pytest.mark.e2e

PROMPT = "Stream me, token by token: naïve café 東京 🚀"


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


@pytest.fixture
def client(srv: LiveServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=srv.url, api_key="unused", max_retries=0) as c:
        yield c


def user(text: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


def test_messages_stream_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="echo", max_tokens=100, system="Be brief.", messages=user(PROMPT)
    ) as stream:
        assert "".join(stream.text_stream) == PROMPT
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == PROMPT
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 9)
    assert final.model == "echo" and final.role == "assistant"


def test_messages_stream_max_tokens(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="echo", max_tokens=2, messages=user("a b c d")) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "a b "
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 2


def test_raw_event_iteration(client: anthropic.Anthropic) -> None:
    stream = client.messages.create(model="echo-slow", max_tokens=100, messages=user(PROMPT), stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == PROMPT
    delta = events[-2]
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"


def test_messages_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="echo",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
        stop_sequences=["zzz"],
        extra_body={"temperature": 0.5},  # this SDK release has no temperature argument
    )
    assert message.content[0].type == "text" and message.content[0].text == PROMPT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 13 and message.usage.output_tokens == 9


async def test_async_stream(srv: LiveServer) -> None:
    async with (
        anthropic.AsyncAnthropic(base_url=srv.url, api_key="unused", max_retries=0) as client,
        client.messages.stream(model="echo", max_tokens=100, messages=user(PROMPT)) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == PROMPT and final.stop_reason == "end_turn"


def test_mid_stream_failure_raises_api_status_error(client: anthropic.Anthropic) -> None:
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="echo-fail", max_tokens=100, messages=user("a b c d e")) as stream,
    ):
        received.extend(stream.text_stream)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "echo failed after 3 tokens (as configured)"},
    }
    assert received == ["a ", "b ", "c "]


def test_unknown_model_raises_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="nope", max_tokens=5, messages=user("x"))
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "unknown model 'nope'; see GET /v1/models"},
    }


def test_a_stop_sequence_is_reported_as_such(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="echo", max_tokens=100, messages=user("one two END three"), stop_sequences=["END"]
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    with client.messages.stream(
        model="echo", max_tokens=100, messages=user("one two END three"), stop_sequences=["END"]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "one two "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


def test_tools_raise_bad_request(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="echo",
            max_tokens=5,
            messages=user("x"),
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any"},
        )
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "tools: sluiceway does not call tools; tools must be empty",
        },
    }


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    models = list(client.models.list())
    assert models[0].id == "echo" and {"echo-slow", "echo-fail"} <= {m.id for m in models}
    model = client.models.retrieve("echo")
    assert (model.id, model.type, model.display_name) == ("echo", "model", "echo")
    assert model.created_at == models[0].created_at and model.created_at.tzinfo is not None
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_an_unknown_endpoint_raises_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.count_tokens(model="echo", messages=user("x"))
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_non_stream_failure_raises_status_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="echo-fail", max_tokens=5, messages=user("a b c d e"))
    assert caught.value.status_code == 502


@pytest.mark.local
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_local_model_stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="local", max_tokens=8, messages=user("Say hello.")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_keep_alive_pings_between_tokens_are_invisible() -> None:
    with (
        protocol_server(heartbeat_s=0.01) as srv,
        anthropic.Anthropic(base_url=srv.url, api_key="unused", max_retries=0) as client,
        client.messages.stream(model="echo-slow", max_tokens=10, messages=user("a b c d")) as stream,
    ):
        assert "".join(stream.text_stream) == "a b c d"
        final = stream.get_final_message()
        assert final.stop_reason == "end_turn"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 4)
