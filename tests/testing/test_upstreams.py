"""The local upstreams: exact wire frames, scripted behaviour, and the disconnect record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sluiceway.testing import AnthropicUpstream, OpenAIUpstream, Script, run_upstream
from sluiceway.testing.upstreams import Reply, plan_reply

USER = [{"role": "user", "content": "hello there world"}]


@pytest.fixture(scope="module")
def openai_url() -> Iterator[str]:
    with run_upstream(OpenAIUpstream()) as url:
        yield url


def frames(body: str) -> list[str]:
    assert body.endswith("\n\n")
    return body[:-2].split("\n\n")


def chat(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": USER, **body})


def test_openai_stream_frames(openai_url: str) -> None:
    response = chat(openai_url, stream=True, stream_options={"include_usage": True}, max_tokens=2)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    *events, done = frames(response.text)
    assert done == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events]
    assert [c["choices"] for c in chunks] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {"content": "hello "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "there "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert [c["usage"] for c in chunks] == [None] * 4 + [
        {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    ]
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], "chat.completion.chunk", "m")
    }


def test_openai_stream_without_usage_has_no_usage_chunk(openai_url: str) -> None:
    *events, done = frames(chat(openai_url, stream=True).text)
    assert done == "data: [DONE]"
    assert all("usage" not in json.loads(e.removeprefix("data: ")) for e in events)
    assert len(events) == 5


def test_openai_non_stream_and_models_parse_with_the_sdk(openai_url: str) -> None:
    client = openai.OpenAI(base_url=f"{openai_url}/v1", api_key="k", max_retries=0)
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b"}])
    assert completion.choices[0].message.content == "a b"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 4
    assert [m.id for m in client.models.list()] == ["mock-model"]
    client.close()


def test_anthropic_event_sequence_and_usage() -> None:
    upstream = AnthropicUpstream(Script(reply="héllo wörld"))
    with run_upstream(upstream) as url:
        body = {"model": "c", "max_tokens": 9, "stream": True, "messages": USER}
        response = httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": "sk-ant-k"})
    events = [e.split("\n") for e in frames(response.text)]
    names = [name.removeprefix("event: ") for name, _ in events]
    data = [json.loads(d.removeprefix("data: ")) for _, d in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [d["type"] for d in data] == names
    assert [d["delta"]["text"] for d in data[3:5]] == ["héllo ", "wörld"]
    assert data[0]["message"]["usage"] == {"input_tokens": 3, "output_tokens": 1}
    assert data[6] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }
    assert upstream.log.requests[0].api_key == "sk-ant-k"


def test_anthropic_refuses_what_the_real_api_refuses() -> None:
    with run_upstream(AnthropicUpstream()) as url:
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        message = client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "a"}])
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            client.messages.create(model="c", max_tokens=5, messages=[], extra_body={"temperature": 1.0})
        refused = httpx.post(f"{url}/v1/messages", json={"model": "c", "messages": USER})
        client.close()
    assert message.content[0].type == "text" and message.content[0].text == "a"
    assert message.stop_reason == "end_turn"
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"


def test_scripted_failure_carries_status_headers_and_error_body() -> None:
    upstream = OpenAIUpstream(Script(fail_status=429, retry_after="3", retry_after_ms="2500"))
    with run_upstream(upstream) as url:
        response = chat(url, stream=True)
    assert response.status_code == 429
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")
    assert response.json()["error"]["message"] == "Rate limit reached."


def test_a_client_leaving_at_full_speed_is_recorded_once() -> None:
    upstream = OpenAIUpstream(Script(tokens=200_000))
    with run_upstream(upstream) as url, httpx.Client() as client:
        body = {"model": "m", "messages": USER, "stream": True}
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            next(response.iter_raw())
        assert upstream.log.wait_for(lambda log: len(log.disconnects) == 1 and log.active == 0)
    [gone] = upstream.log.disconnects
    assert gone.path == "/v1/chat/completions"
    assert gone.tokens_sent < 200_000
    assert upstream.log.completed == 0


def test_hung_stream_notices_the_disconnect_and_shutdown_is_clean() -> None:
    upstream = AnthropicUpstream(Script(hang="before_first_token"))
    with run_upstream(upstream) as url:
        body = {"model": "c", "max_tokens": 5, "stream": True, "messages": USER}
        with httpx.stream("POST", f"{url}/v1/messages", json=body) as response:
            assert b"message_start" in next(response.iter_raw())
        assert upstream.log.wait_for(lambda log: len(log.disconnects) == 1 and log.active == 0)
    assert upstream.log.disconnects[0].tokens_sent == 0
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/messages", json=body)


@pytest.mark.parametrize(
    ("script", "limit", "stops", "expected"),
    [
        (Script(reply="a b c"), None, [], Reply(["a ", "b ", "c"])),
        (Script(reply="a b c"), 2, [], Reply(["a ", "b "], "length")),
        (Script(reply="a b STOP c"), None, ["STOP", "c"], Reply(["a ", "b "], "stop_sequence", "STOP")),
        (Script(reply="a b STOP c"), 1, ["STOP"], Reply(["a "], "length")),
        (Script(reply="x y", tokens=5), None, [], Reply(["x ", "y", "x ", "y", "x "])),
        (Script(reply="", tokens=2), None, [], Reply(["token ", "token "])),
    ],
)
def test_plan_reply(script: Script, limit: int | None, stops: list[str], expected: Reply) -> None:
    assert plan_reply(script, "ignored", limit, stops) == expected
