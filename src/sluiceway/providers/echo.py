"""``echo``: streams the last user message back, word by word, with an optional delay per token.

Deterministic and dependency-free: demos, front-end work and tests use it. The pieces join back
to exactly the message (whitespace stays attached to the word it follows). Stop sequences work as
a model's do: the echo ends just before the first place one of them occurs (it may span words or
end inside one), with finish reason ``stop`` and the sequence that matched.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from sluiceway.errors import error_from_code
from sluiceway.events import Event, Finish, TextDelta, Usage
from sluiceway.providers.base import ModelConfig, Option, Provider, declares_options, options_check
from sluiceway.requests import ChatRequest

_PIECE = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """Split ``text`` into word-sized pieces whose concatenation is ``text``."""
    return _PIECE.findall(text)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` up to the first occurrence of any of ``stops``, and the stop sequence found there.

    Of two found at the same place, the shorter (which a model writing left to right meets first)
    wins; empty stop sequences are ignored.
    """
    found = [(at, stop) for stop in stops if stop and (at := text.find(stop)) >= 0]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at], stop


class EchoProvider:
    """Echo the newest user message; ``delay_ms`` waits before each piece."""

    def __init__(
        self, delay_ms: float = 0.0, fail_after: int | None = None, fail_code: str = "upstream_error"
    ) -> None:
        self.delay_ms = delay_ms
        self.fail_after = fail_after
        self.fail_code = fail_code

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        text, stop_sequence = cut_at_stop(request.last_user_text, request.stop)
        pieces = split_words(text)
        input_tokens = sum(len(split_words(m.content)) for m in request.messages)
        yield Usage(input_tokens, 0)
        limit = request.max_tokens if request.max_tokens is not None else len(pieces)
        delay = self.delay_ms / 1000
        sent = 0
        for piece in pieces[:limit]:
            if self.fail_after is not None and sent >= self.fail_after:
                raise error_from_code(self.fail_code, f"echo failed after {sent} tokens (as configured)")
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            yield TextDelta(piece)
            sent += 1
        yield Usage(input_tokens, sent)
        yield Finish("length") if sent < len(pieces) else Finish("stop", stop_sequence=stop_sequence)

    async def aclose(self) -> None:
        return None


OPTIONS = options_check(
    {"delay_ms": Option("number"), "fail_after": Option("count"), "fail_code": Option("string")}
)
"""The options of ``[models.NAME]`` tables with ``provider = "echo"``, checked at start."""


@declares_options(OPTIONS)
def create(config: ModelConfig) -> Provider:
    """Factory for ``provider = "echo"``.

    Options: ``delay_ms`` per piece; ``fail_after`` N pieces then raise ``fail_code`` (to test how
    clients see a mid-stream upstream failure).
    """
    opts = config.options
    fail_after = opts.get("fail_after")
    return EchoProvider(
        float(opts.get("delay_ms", 0)),
        None if fail_after is None else int(fail_after),
        str(opts.get("fail_code", "upstream_error")),
    )
