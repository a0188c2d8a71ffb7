"""``sluiceway chat``: talk to a server from the terminal, one question or a whole session.

How Ctrl-C works: while an answer streams, SIGINT raises ``KeyboardInterrupt`` in the loop that
prints it; the session then asks the server to cancel the stream (``POST …/cancel``), closes the
connection (so a server without that endpoint cancels on disconnect) and returns to the prompt.
At the prompt, Ctrl-C or Ctrl-D ends the session. When stdout is closed under it (``| head -1``),
the stream is cancelled the same way and the command ends quietly (see :mod:`sluiceway.cli.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sluiceway.cli.urls import url_problem
from sluiceway.client._types import DEFAULT_URL, ChatResult
from sluiceway.errors import SluicewayError
from sluiceway.events import Event, TextDelta

if TYPE_CHECKING:
    from sluiceway.client import Client

PROMPT = "you> "
EXAMPLES = """\
examples:
  sluiceway chat "Why is the sky blue?"
  echo "Summarise this" | sluiceway chat --model local
  sluiceway chat --json "hello" | jq .
  sluiceway chat                      # interactive; Ctrl-C stops an answer, Ctrl-C/Ctrl-D quits

exit codes: 0 ok, 1 server or connection error, 2 usage error, 130 interrupted (one-shot)"""


def add_parser(sub: Any) -> None:
    """Register ``chat`` and its flags."""
    p: argparse.ArgumentParser = sub.add_parser(
        "chat",
        help="chat with a sluiceway server from the terminal",
        description="Stream an answer to the terminal as it arrives. With PROMPT (or a prompt\n"
        "piped on stdin) ask once; without, start an interactive session that keeps the\n"
        "conversation, with line editing and history. A dim line after each answer shows\n"
        "the time to first token, the tokens and tokens/s.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the question (default: read stdin if piped)")
    p.add_argument(
        "--url",
        default=os.environ.get("SLUICEWAY_URL", DEFAULT_URL),
        help=f"server base URL (default $SLUICEWAY_URL or {DEFAULT_URL})",
    )
    add_api_key(p)
    p.add_argument("--model", help="model name (default: the server's default model)")
    p.add_argument("--system", help="system prompt sent before the conversation")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="limit the answer to N tokens")
    p.add_argument("--json", action="store_true", help="print raw events as JSON lines instead of text")
    p.add_argument(
        "--conversation",
        metavar="ID",
        help="continue a conversation stored on the server, or 'new' to start one (only the new "
        "message is sent; the server keeps the history)",
    )
    p.add_argument("--no-stats", action="store_true", help="do not print the TTFT/tokens line")
    p.set_defaults(run=run)


def add_api_key(p: argparse.ArgumentParser) -> None:
    """``--api-key``, defaulting to ``$SLUICEWAY_API_KEY`` (the safer way: flags show up in ``ps``)."""
    p.add_argument(
        "--api-key",
        default=os.environ.get("SLUICEWAY_API_KEY"),
        metavar="KEY",
        help="API key, sent as Authorization: Bearer (default $SLUICEWAY_API_KEY)",
    )


def positive_int(value: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number


def run(args: argparse.Namespace) -> int:
    """Ask once (PROMPT or piped stdin) or run the interactive session."""
    prompt = args.prompt
    if prompt is not None and not prompt.strip():
        return usage_error("nothing to ask: the prompt is empty")
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip() or None
        if prompt is None:
            return usage_error("nothing to ask: the prompt on stdin is empty")
    problem = url_problem(args.url)
    if problem is not None:
        return usage_error(f"--url: {problem}")
    if args.system is not None and args.conversation is not None:
        return usage_error("--system cannot be combined with --conversation (the server keeps its history)")
    from sluiceway.client import Client  # httpx: imported by the commands that talk HTTP, not by serve

    with Client(args.url, api_key=args.api_key) as client:
        session = ChatSession(client, args, sys.stdout, sys.stderr)
        if prompt is not None:
            return session.ask_once(prompt)
        return session.interactive()


def usage_error(message: str) -> int:
    """Say what is wrong with the command line; exit code 2."""
    print(f"sluiceway chat: {message}", file=sys.stderr)
    return 2


class ChatSession:
    """One terminal conversation: sends turns, prints answers and stats, handles Ctrl-C."""

    def __init__(self, client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.client = client
        self.args = args
        self.out = out
        self.err = err
        self.history: list[dict[str, str]] = []

    def ask_once(self, prompt: str) -> int:
        """Ask one question; the exit code says how it went."""
        try:
            result = self.ask(prompt)
        except SluicewayError as exc:
            self.report(exc)
            return 1
        return 0 if result is not None else 130

    def interactive(self) -> int:
        """Prompt, answer, repeat; Ctrl-C or Ctrl-D at the prompt ends the session (exit 0)."""
        save_history = enable_line_editing()
        model = self.args.model or "the default model"
        self.dim(f"sluiceway chat · {self.args.url} · {model}")
        self.dim("Ctrl-C stops an answer; Ctrl-C or Ctrl-D at the prompt quits.")
        try:
            while True:
                try:
                    line = input(PROMPT)
                except (EOFError, KeyboardInterrupt):
                    print(file=self.out)
                    return 0
                if line.strip():
                    try:
                        self.turn(line)
                    except KeyboardInterrupt:  # Ctrl-C before the answer's own handler was set up
                        self.dim("[stopped]")
        finally:
            save_history()

    def turn(self, text: str) -> None:
        """One interactive turn; errors are shown and the session goes on."""
        try:
            self.ask(text)
        except SluicewayError as exc:
            self.report(exc)

    def ask(self, text: str) -> ChatResult | None:
        """Stream the answer to ``text``; ``None`` if the user stopped it with Ctrl-C."""
        conversation_id = self.args.conversation
        messages: str | list[dict[str, str]] = text
        if conversation_id is None:
            self.history.append({"role": "user", "content": text})
            messages = list(self.history)
        stream = self.client.stream_chat(
            messages,
            model=self.args.model,
            max_tokens=self.args.max_tokens,
            system=self.args.system,
            conversation_id=conversation_id,
        )
        try:
            for event in stream:
                self.show(event)
            self.end_answer(stream.result)
            self.stats(stream.result)
        except KeyboardInterrupt:
            self.stop(stream.cancel)
            return None
        except BrokenPipeError:  # our reader left (`| head`): stop the generation, then stop quietly
            stream.cancel()
            raise
        except SluicewayError:
            self.end_answer(stream.result)
            raise
        finally:
            stream.close()
            self.remember(stream.result.text)
            self.follow(stream.conversation_id)
        return stream.result

    def show(self, event: Event) -> None:
        """Print one event: its text, or with ``--json`` the event itself."""
        if self.args.json:
            print(json.dumps(event_json(event), ensure_ascii=False), file=self.out, flush=True)
        elif isinstance(event, TextDelta):
            self.out.write(event.text)
            self.out.flush()

    def end_answer(self, result: ChatResult) -> None:
        """End the answer's line."""
        if not self.args.json and result.text:
            print(file=self.out, flush=True)

    def stop(self, cancel: Callable[[], bool]) -> None:
        """After Ctrl-C mid-answer: tell the server, say so, back to the prompt."""
        try:
            confirmed = cancel()
        except KeyboardInterrupt:
            confirmed = False
        if not self.args.json:
            print(file=self.out, flush=True)
        self.dim("[stopped]" if confirmed else "[stopped: connection closed]")

    def remember(self, answer: str) -> None:
        """Keep the (possibly partial) answer in the conversation."""
        if self.args.conversation is None and self.history and answer:
            self.history.append({"role": "assistant", "content": answer})

    def follow(self, conversation_id: str | None) -> None:
        """Continue the stored conversation the server named (``--conversation new`` becomes its id)."""
        if conversation_id is not None and conversation_id != self.args.conversation:
            self.args.conversation = conversation_id
            self.dim(f"conversation {conversation_id} (continue it with --conversation {conversation_id})")

    def stats(self, result: ChatResult) -> None:
        """The dim line after an answer: TTFT, tokens, tokens/s."""
        if not self.args.no_stats and not self.args.json:
            self.dim(format_stats(result))

    def report(self, exc: SluicewayError) -> None:
        """An error as one line (or one JSON event with ``--json``); never a traceback."""
        if self.args.json:
            payload: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
            if exc.retry_after is not None:
                payload["retry_after"] = exc.retry_after
            print(json.dumps(payload, ensure_ascii=False), file=self.out, flush=True)
        hint = f" (retry after {exc.retry_after:g} s)" if exc.retry_after is not None else ""
        print(f"sluiceway chat: error [{exc.code}]: {exc.message}{hint}", file=self.err, flush=True)

    def dim(self, text: str) -> None:
        """Print to stderr, dimmed when stderr is a terminal."""
        if self.err.isatty():
            text = f"\x1b[2m{text}\x1b[0m"
        print(text, file=self.err, flush=True)


def event_json(event: Event) -> dict[str, Any]:
    """An event as a JSON object: its fields plus ``type`` (``text_delta``, ``usage``, ``finish``)."""
    kind = {"TextDelta": "text_delta", "Usage": "usage", "Finish": "finish", "ErrorEvent": "error"}
    return {"type": kind[type(event).__name__], **asdict(event)}


def format_stats(result: ChatResult) -> str:
    """``TTFT 41 ms · 12 tokens · 83.2 tokens/s`` (a dash for what is unknown)."""
    ttft = "–" if result.ttft_ms is None else f"{result.ttft_ms:.0f} ms"
    tokens = result.output_tokens if result.output_tokens is not None else "–"
    tps = "–" if result.tokens_per_s is None else f"{result.tokens_per_s:.1f} tokens/s"
    resumed = f" · resumed {result.resumes}×" if result.resumes else ""
    return f"TTFT {ttft} · {tokens} tokens · {tps}{resumed}"


def enable_line_editing() -> Callable[[], None]:
    """Turn on readline editing with a persistent history; return the function that saves it."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = history_path()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    return save


def history_path() -> Path:
    """``$SLUICEWAY_HISTORY``, or ``chat_history`` in the user's state directory."""
    configured = os.environ.get("SLUICEWAY_HISTORY")
    if configured:
        return Path(configured)
    from platformdirs import user_state_path

    return user_state_path("sluiceway") / "chat_history"
