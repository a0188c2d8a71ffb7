"""The official ``openai`` Python SDK, unmodified, against a live sluiceway (echo; local if installed)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import openai
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
def client(srv: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(srv: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def user(text: str) -> list[openai.types.chat.ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_sync_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=user(PROMPT))
    assert completion.choices[0].message.content == PROMPT
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 9
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 9


def test_sync_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo", messages=user(PROMPT), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PROMPT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9


def test_sync_stream_max_tokens_is_length(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo",
        messages=user("a b c d"),
        stream=True,
        max_completion_tokens=2,
        stop=["zzz"],
        temperature=0,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b "
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_async_non_stream(aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        completion = await aclient.chat.completions.create(model="echo", messages=user(PROMPT), max_tokens=50)
    assert completion.choices[0].message.content == PROMPT


async def test_async_stream(aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        stream = await aclient.chat.completions.create(model="echo-slow", messages=user(PROMPT), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == PROMPT


def test_mid_stream_failure_raises_api_error(client: openai.OpenAI) -> None:
    received: list[str | None] = []
    stream = client.chat.completions.create(model="echo-fail", messages=user("a b c d e"), stream=True)
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert type(caught.value) is openai.APIError
    assert caught.value.message == "echo failed after 3 tokens (as configured)"
    assert caught.value.body == {
        "message": "echo failed after 3 tokens (as configured)",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
    assert received == ["a ", "b ", "c "]


async def test_async_mid_stream_failure_raises_api_error(aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        stream = await aclient.chat.completions.create(
            model="echo-fail", messages=user("a b c d e"), stream=True
        )
        with pytest.raises(openai.APIError, match="echo failed"):
            async for _ in stream:
                pass


def test_non_stream_failure_raises_status_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="echo-fail", messages=user("a b c d e"))
    assert caught.value.status_code == 502


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=user("x"), stream=True)
    assert caught.value.code == "model_not_found"


def test_bad_request_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="echo", messages=user("x"), temperature=7)


def test_models_list(client: openai.OpenAI) -> None:
    assert {"echo", "echo-slow", "echo-fail"} <= {m.id for m in client.models.list()}


def test_models_retrieve(client: openai.OpenAI) -> None:
    model = client.models.retrieve("echo")
    assert (model.id, model.object, model.owned_by) == ("echo", "model", "echo")
    assert model.created == next(m.created for m in client.models.list() if m.id == "echo")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_unserved_features_raise_bad_request(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=user("x"), **extra)
    body = caught.value.body
    assert isinstance(body, dict) and body["message"].startswith(f"{param}: sluiceway ")
    assert caught.value.type == "invalid_request_error"


@pytest.mark.local
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_local_model_stream_and_non_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local",
        messages=user("Say hello."),
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = client.chat.completions.create(model="local", messages=user("Say hello."), max_tokens=8)
    assert (completion.choices[0].message.content or "").strip()
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_keep_alives_between_tokens_are_invisible() -> None:
    with (
        protocol_server(heartbeat_s=0.01) as srv,
        openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model="echo-slow", messages=user("a b c d"), stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "a b c d"
