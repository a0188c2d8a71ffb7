"""The one event model: everything a provider says and every wire encoder reads.

Providers yield these; the stream relay stores them in a per-stream log; wire encoders turn them
into bytes. Nothing else crosses from a model to a client.

A well-formed stream is::

    Usage?  TextDelta*  Usage?  (ErrorEvent)?  Finish

Exactly one ``Finish`` ends every stream. An ``ErrorEvent`` (if any) comes right before
``Finish(reason="error")``. A ``Usage`` may appear early (input tokens known, output 0) and again
later; the last one wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

FinishReason: TypeAlias = Literal["stop", "length", "cancelled", "error", "content_filter"]
FINISH_REASONS: tuple[FinishReason, ...] = ("stop", "length", "cancelled", "error", "content_filter")


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, in order; all deltas joined are the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts consumed so far: prompt tokens in, answer tokens out."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a stream and why it ended.

    ``ttft_ms`` and ``tokens_per_s`` are measured by the relay (providers leave them ``None``).
    ``stop_sequence`` is the stop sequence that ended the answer (reason ``stop``), when the provider
    says which one matched; only the Anthropic wire tells it (``stop_reason: "stop_sequence"``), the
    other protocols read such a finish as a plain ``stop``.
    """

    reason: FinishReason
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A failure after the stream began, with a stable code from :mod:`sluiceway.errors`."""

    code: str
    message: str
    retryable: bool = False
    retry_after: float | None = None


Event: TypeAlias = TextDelta | Usage | Finish | ErrorEvent


_SURROGATE = re.compile("[\ud800-\udfff]")


def repaired_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: what no encoder can write as UTF-8, and
    what a JSON parser (the standard library's, which the Anthropic SDK uses) hands on from an
    escape such as ``"\\ud83d"``, half an emoji."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)
