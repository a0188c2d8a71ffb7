"""``sluiceway chat`` through its runner against a real server: output, JSON events, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sluiceway.cli.chat import format_stats
from sluiceway.cli.main import main
from sluiceway.client import ChatResult
from sluiceway.events import Usage
from tests.cli.test_chat_tty import wait_until
from tests.live import LiveServer, free_port, live_server, make_settings


def chat(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["chat", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_question_streams_the_answer_and_a_stats_line(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = chat(capsys, "--url", live.url, "--model", "echo", "Why  is the sky blue?")
    assert code == 0
    assert out == "Why  is the sky blue?\n"
    assert "TTFT " in err and "5 tokens" in err and "\x1b[" not in err  # not a terminal: no colour


def test_the_prompt_is_read_from_stdin_when_piped(
    live: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from a pipe\n"))
    code, out, _ = chat(capsys, "--url", live.url, "--no-stats")
    assert (code, out) == (0, "from a pipe\n")


def test_json_prints_raw_events(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = chat(capsys, "--url", live.url, "--json", "--max-tokens", "2", "a b c")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and err == ""
    assert events[:2] == [{"type": "text_delta", "text": "a "}, {"type": "text_delta", "text": "b "}]
    assert events[2] == {"type": "usage", "input_tokens": 3, "output_tokens": 2}
    assert events[3]["type"] == "finish" and events[3]["reason"] == "length"


def test_server_error_exits_1_with_a_message_and_no_traceback(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = chat(capsys, "--url", live.url, "--model", "nope", "hi")
    assert code == 1 and out == ""
    assert "error [unknown_model]" in err and "Traceback" not in err


def test_mid_stream_error_keeps_the_partial_answer(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = chat(capsys, "--url", live.url, "--model", "echo-fail", "a b c d e")
    assert code == 1 and out == "a b c \n"
    assert "error [upstream_error]" in err


def test_json_error_is_an_event_too(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = chat(capsys, "--url", live.url, "--json", "--model", "nope", "hi")
    assert code == 1 and json.loads(out)["code"] == "unknown_model"


def test_no_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = chat(capsys, "--url", f"http://127.0.0.1:{free_port()}", "hi")
    assert code == 1 and "error [connection_failed]" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-tokens", "0", "hi"],
        ["--max-tokens", "many", "hi"],
        ["--bogus", "hi"],
    ],
)
def test_bad_flags_exit_2_with_chats_own_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["chat", *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: sluiceway chat ")


def test_an_unknown_flag_after_the_prompt_shows_chats_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["chat", "hi", "--bogus"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: sluiceway chat ")
    assert "sluiceway chat: error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:abc", "http://[::1", "http://256.1.1.1", "http://127.0.0.1:99999"]
)
def test_an_invalid_url_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = chat(capsys, "hi", "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"sluiceway chat: --url: invalid URL {url!r}") and err.count("\n") == 1


def test_other_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert chat(capsys, "--url", "127.0.0.1:8000", "hi")[0] == 2
    code, _, err = chat(capsys, "")
    assert code == 2 and "the prompt is empty" in err
    assert chat(capsys, " \n ")[0] == 2
    assert chat(capsys, "--system", "s", "--conversation", "c1", "hi")[0] == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    code, _, err = chat(capsys)
    assert code == 2 and "empty" in err


def test_conversation_new_then_continue(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = chat(capsys, "--url", live.url, "--conversation", "new", "first question")
    assert code == 0 and out == "first question\n", err
    conversation_id = err.split("conversation ", 1)[1].split()[0]
    code, out, err = chat(capsys, "--url", live.url, "--conversation", conversation_id, "second one")
    assert code == 0 and out == "second one\n"
    assert "conversation " not in err  # same conversation: nothing new to say
    stored = live_get(live, f"/conversations/{conversation_id}")
    texts = [m["content"] for m in stored["messages"]]
    assert texts == ["first question", "first question", "second one", "second one"]


def live_get(live: LiveServer, path: str) -> dict[str, object]:
    import httpx

    response = httpx.get(live.url + path)
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


def test_format_stats() -> None:
    result = ChatResult("ab", Usage(1, 12), "stop", ttft_ms=41.2, tokens_per_s=83.24, resumes=1)
    assert format_stats(result) == "TTFT 41 ms · 12 tokens · 83.2 tokens/s · resumed 1×"
    assert format_stats(ChatResult("", None, None, None, None)) == "TTFT – · – tokens · –"


KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def locked() -> Iterator[LiveServer]:
    """A server that wants an API key."""
    with live_server(make_settings(api_keys=[KEY])) as server:
        yield server


def test_api_key_from_flag_or_environment(
    locked: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = chat(capsys, "--url", locked.url, "hi")
    assert code == 1 and "error [unauthorized]" in err
    assert chat(capsys, "--url", locked.url, "--api-key", KEY, "hi")[:2] == (0, "hi\n")
    monkeypatch.setenv("SLUICEWAY_API_KEY", KEY)
    assert chat(capsys, "--url", locked.url, "again")[:2] == (0, "again\n")


class ClosedPipe(io.StringIO):
    """A stdout whose reader leaves after ``lines`` lines, like ``| head -1``."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        if self.getvalue().count("\n") >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_closed_stdout_cancels_the_answer_and_ends_quietly(
    live: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluiceway.client import ChatStream

    cancelled: list[str | None] = []
    cancel = ChatStream.cancel

    def spy(stream: ChatStream) -> bool:
        cancelled.append(stream.stream_id)
        return cancel(stream)

    monkeypatch.setattr(ChatStream, "cancel", spy)
    monkeypatch.setattr("sys.stdout", ClosedPipe(lines=1))
    words = " ".join(f"w{i}" for i in range(200))  # 10 s at 50 ms a word
    code = main(["chat", "--json", "--url", live.url, "--model", "echo-slow", words])
    assert code == 141 and "Traceback" not in capsys.readouterr().err
    assert len(cancelled) == 1 and cancelled[0] is not None
    stream = live.call(live.state.hub.get, cancelled[0])
    assert stream is not None and wait_until(lambda: stream.finished)
    assert stream.cancelled_by == "stop"  # cancelled at once, not after the disconnect grace


def test_piped_into_head_there_is_no_traceback(live: LiveServer) -> None:
    """The real thing: ``sluiceway chat "<2000 lines>" | head -1``."""
    prompt = "\n".join(f"line {i}" for i in range(2000))
    argv = [sys.executable, "-m", "sluiceway", "chat", "--url", live.url, "--model", "echo-slow", prompt]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"line 0\n"
        proc.stdout.close()  # head -1 exits
        err = proc.stderr.read().decode()
        code = proc.wait(30)
    assert (code, err) == (141, "")
