"""What the client sends: request bodies and paths."""

from __future__ import annotations

from sluiceway.client._types import HttpCall, cancel_call, chat_call, resume_call
from sluiceway.requests import Message


def test_a_string_is_one_user_message() -> None:
    assert chat_call("hi") == HttpCall("POST", "/chat/stream", json={"message": "hi"})


def test_options_and_system_prompt() -> None:
    call = chat_call("hi", model="echo", max_tokens=5, system="be brief", temperature=0.5)
    assert call.json == {
        "messages": [{"role": "system", "content": "be brief"}],
        "message": "hi",
        "model": "echo",
        "max_tokens": 5,
        "temperature": 0.5,
    }


def test_a_conversation_of_messages_and_dicts() -> None:
    turns = [Message("user", "a"), {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    call = chat_call(turns)
    assert call.json == {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ]
    }


def test_conversation_id_and_extra_fields() -> None:
    call = chat_call("next", conversation_id="c-1", extra={"disconnect": "finish"})
    assert call.json == {"message": "next", "conversation_id": "c-1", "disconnect": "finish"}


def test_resume_and_cancel_paths_quote_the_id() -> None:
    assert resume_call("ab/c", 4) == HttpCall("GET", "/chat/stream/ab%2Fc", params={"after": "4"})
    assert cancel_call("abc") == HttpCall("POST", "/chat/stream/abc/cancel")
