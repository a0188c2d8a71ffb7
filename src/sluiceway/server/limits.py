"""What one generation may ask for, checked once before it starts, whichever protocol asked.

Two kinds of limit meet here because both are checked at the same moment, in
:func:`admit`, which ``start_stream`` calls for every protocol:

* per request (from settings): how many messages, how long each, and ``max_tokens`` capped to the
  model's ``max_tokens_cap`` - a 400 naming the field as the client's protocol names it
  (:class:`InputNames`, which the route hands to ``start_stream``), or a silent cap;
* per API key (from its ``[[api_keys]]`` table): which models (403), generations started per
  sliding minute (``rpm``), generations running at once (``max_concurrent``) and input + output
  tokens per UTC day (``tokens_per_day``) - a 429 with ``retry_after``.

How the quotas are counted: admitting a generation records its start and takes a slot; a
:class:`Lease` gives the slot back when the generation's task ends (finished, failed or cancelled)
and adds the tokens it used to the key's day. A generation may overshoot the day's budget by its
own output only up to what was left when it started: ``max_tokens`` is lowered to the remainder.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sluiceway.errors import InvalidRequestError, PermissionDeniedError, RateLimitedError
from sluiceway.events import Usage
from sluiceway.providers.base import ModelConfig
from sluiceway.requests import ChatRequest

if TYPE_CHECKING:
    from sluiceway.server.auth import ApiKey
    from sluiceway.server.settings import Settings
    from sluiceway.streams.hub import Stream

WINDOW_S = 60.0
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class InputNames:
    """How a protocol names the parts of a conversation in an input limit's 400.

    ``message`` is the field of the ``i``-th message's content. ``system``, when set, is the
    protocol's own system prompt field (Anthropic's ``system``): a leading system message of the
    request came from it, is named by it and is not counted as a message.
    """

    message: str = "messages[{i}].content"
    system: str | None = None


def check_input(
    request: ChatRequest, max_messages: int, max_message_chars: int, names: InputNames | None = None
) -> None:
    """Refuse a conversation with too many messages or a message that is too long."""
    names = names or InputNames()
    messages = request.messages
    system = names.system if names.system and messages and messages[0].role == "system" else None
    if system is not None:
        messages = messages[1:]
    count = len(messages)
    if count > max_messages:
        raise InvalidRequestError(f"messages: {count} messages; the limit is {max_messages}")
    if system is not None:
        _check_length(request.messages[0].content, system, max_message_chars)
    for i, message in enumerate(messages):
        _check_length(message.content, names.message.format(i=i), max_message_chars)


def _check_length(content: str, where: str, max_message_chars: int) -> None:
    if len(content) > max_message_chars:
        raise InvalidRequestError(f"{where}: {len(content)} characters; the limit is {max_message_chars}")


def cap_max_tokens(request: ChatRequest, cap: int | None) -> ChatRequest:
    """``request`` with ``max_tokens`` lowered to ``cap`` (set to it when unset)."""
    if cap is None or (request.max_tokens is not None and request.max_tokens <= cap):
        return request
    return replace(request, max_tokens=cap)


@dataclass(slots=True)
class KeyUsage:
    """What one key is doing: recent starts, running generations, tokens used on ``day``."""

    starts: deque[float] = field(default_factory=deque)
    running: int = 0
    day: int = 0
    tokens: int = 0


class Lease:
    """One admitted generation's hold on its key's quotas; :meth:`hold` returns it when the stream ends."""

    def __init__(self, limits: KeyLimits | None, key: ApiKey | None, at: float = 0.0) -> None:
        self.limits = limits
        self.key = key
        self.at = at
        self.released = False

    def hold(self, stream: Stream) -> None:
        """Give the slot back, with the tokens used, when ``stream``'s generation ends."""
        if self.limits is None or self.key is None:  # no quota holds it: nothing to give back
            return
        if stream.task is None:  # nothing runs: nothing to wait for
            self.release(stream.meter.usage_so_far())
            return
        stream.task.add_done_callback(lambda _: self.release(stream.meter.usage_so_far()))

    def release(self, usage: Usage) -> None:
        """Return the slot once and count ``usage`` against the key's day."""
        if self.released or self.limits is None or self.key is None:
            return
        self.released = True
        self.limits.release(self.key, usage)

    def cancel(self) -> None:
        """The generation never started (the hub refused it): as if it had not been admitted."""
        if self.released or self.limits is None or self.key is None:
            return
        self.released = True
        self.limits.release(self.key, Usage(0, 0), started_at=self.at)


class KeyLimits:
    """Per-key counters for one server. ``clock`` is wall time in seconds (tests move it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._usage: dict[str, KeyUsage] = {}

    def usage(self, key: ApiKey) -> KeyUsage:
        """The counters of ``key`` (moved to today, old starts dropped)."""
        usage = self._usage.setdefault(key.name, KeyUsage())
        now = self.clock()
        today = int(now // DAY_S)
        if usage.day != today:
            usage.day, usage.tokens = today, 0
        while usage.starts and usage.starts[0] <= now - WINDOW_S:
            usage.starts.popleft()
        return usage

    def admit(self, key: ApiKey | None, request: ChatRequest) -> tuple[ChatRequest, Lease]:
        """Check ``key``'s model list and quotas; take a slot; return the request within budget."""
        if key is None:
            return request, Lease(None, None)
        if not key.allows(request.model):
            raise PermissionDeniedError(f"this API key may not use model {request.model!r}")
        usage = self.usage(key)
        now = self.clock()
        if key.tokens_per_day is not None and usage.tokens >= key.tokens_per_day:
            raise RateLimitedError(
                f"this API key used its {key.tokens_per_day} tokens for today (UTC)",
                retry_after=float((usage.day + 1) * DAY_S - now),
            )
        if key.max_concurrent is not None and usage.running >= key.max_concurrent:
            raise RateLimitedError(
                f"this API key already runs {usage.running} streams; the limit is {key.max_concurrent}",
                retry_after=1.0,
            )
        if key.rpm is not None and len(usage.starts) >= key.rpm:
            raise RateLimitedError(
                f"this API key started {key.rpm} streams in the last minute; the limit is {key.rpm}",
                retry_after=usage.starts[0] + WINDOW_S - now,
            )
        usage.starts.append(now)
        usage.running += 1
        if key.tokens_per_day is not None:
            request = cap_max_tokens(request, key.tokens_per_day - usage.tokens)
        return request, Lease(self, key, now)

    def release(self, key: ApiKey, used: Usage, started_at: float | None = None) -> None:
        """A generation of ``key`` ended having used ``used`` (``started_at``: un-count its start)."""
        usage = self.usage(key)
        usage.running = max(0, usage.running - 1)
        usage.tokens += used.input_tokens + used.output_tokens
        if started_at is not None and started_at in usage.starts:
            usage.starts.remove(started_at)


def admit(
    settings: Settings,
    limits: KeyLimits,
    key: ApiKey | None,
    config: ModelConfig,
    request: ChatRequest,
    names: InputNames | None = None,
) -> tuple[ChatRequest, Lease]:
    """Every check before a generation starts: input limits (their fields named as ``names`` says),
    the model's cap, then the key's quotas."""
    check_input(request, settings.max_messages, settings.max_message_chars, names)
    request = cap_max_tokens(request, config.max_tokens_cap)
    return limits.admit(key, request)
