"""``anthropic``: Claude models through the official ``anthropic`` SDK's Messages stream.

How it works: one ``AsyncAnthropic`` client per configured model (retries off: the relay decides).
``stream`` enters ``client.messages.stream(...)`` with ``async with``, so cancelling the relay's task
or closing the generator closes the HTTP response and the upstream sees the disconnect. Events:
``message_start`` gives an early ``Usage`` (input tokens, output 0); each ``text_delta`` is a
``TextDelta``; the SDK's accumulated final message gives the last ``Usage`` and the stop reason (with
the matched stop sequence, when one ended the answer).
System messages go to the ``system`` parameter; ``max_tokens``, which Anthropic requires, falls
back to the model's ``max_tokens_cap`` or :data:`DEFAULT_MAX_TOKENS`. ``temperature`` is not sent:
SDK 2.x speaks API version 2026-10-21, which removed the sampling parameters (any of them is a 400).

Options (``[models.NAME.options]``): ``timeout_s`` for the HTTP client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anthropic
from anthropic.lib.streaming import AsyncMessageStreamManager
from anthropic.types import MessageParam
from anthropic.types import Usage as AnthropicUsage

from sluiceway.errors import SluicewayError, UpstreamError
from sluiceway.events import Event, Finish, FinishReason, TextDelta, Usage, repaired_text
from sluiceway.providers import _sdk_errors
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.requests import ChatRequest, Message

DEFAULT_MAX_TOKENS = 1024
KEYLESS_PLACEHOLDER = "sk-ant-no-key-required"

_SDK_ERRORS: tuple[type[Exception], ...] = (anthropic.APIError, *_sdk_errors.TRANSPORT_ERRORS)
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}


class AnthropicProvider:
    """Streams messages from one Anthropic endpoint and model."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str | None,
        api_key: str | None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        timeout_s: float | None = None,
        missing_key_env: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.default_max_tokens = default_max_tokens
        self._api_key = api_key
        self._missing_key_env = missing_key_env
        self._client = anthropic.AsyncAnthropic(
            base_url=base_url,
            api_key=api_key or KEYLESS_PLACEHOLDER,
            max_retries=0,
            timeout=anthropic.NOT_GIVEN if timeout_s is None else timeout_s,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if self._missing_key_env is not None:
            raise _sdk_errors.missing_key(self.name, self._missing_key_env)
        try:
            async with self._open(request) as events:
                started = False
                async for event in events:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        yield TextDelta(repaired_text(event.delta.text))  # JSON may escape half an emoji
                    elif event.type == "message_start":
                        started = True
                        yield Usage(_input_tokens(event.message.usage), 0)
                if not started:
                    raise UpstreamError(f"model {self.name!r}: upstream stream had no message_start")
                final = await events.get_final_message()
        except _SDK_ERRORS as exc:
            raise self._translate(exc) from exc
        if final.stop_reason is None:
            raise UpstreamError(f"model {self.name!r}: upstream ended the stream without a stop reason")
        yield Usage(_input_tokens(final.usage), final.usage.output_tokens)
        matched = final.stop_sequence if final.stop_reason == "stop_sequence" else None
        yield Finish(_FINISH.get(final.stop_reason, "stop"), stop_sequence=matched)

    def _open(self, request: ChatRequest) -> AsyncMessageStreamManager[None]:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        return self._client.messages.stream(
            model=self.model,
            messages=[_message(m) for m in request.messages if m.role != "system"],
            system=system or anthropic.omit,
            max_tokens=request.max_tokens or self.default_max_tokens,
            stop_sequences=list(request.stop) if request.stop else anthropic.omit,
        )

    def _translate(self, exc: Exception) -> SluicewayError:
        if isinstance(exc, anthropic.APITimeoutError):
            return _sdk_errors.timed_out(self.name)
        if isinstance(exc, anthropic.APIConnectionError):
            return _sdk_errors.unreachable(self.name)
        if isinstance(exc, anthropic.APIStatusError) and exc.status_code >= 400:
            return _sdk_errors.from_status(
                exc.status_code, exc.response.headers, exc.body, model=self.name, secret=self._api_key
            )
        if isinstance(exc, anthropic.APIError):  # an ``event: error`` inside a 200 stream
            return _sdk_errors.from_stream_error(exc.body, model=self.name, secret=self._api_key)
        return _sdk_errors.from_transport(exc, model=self.name)

    async def aclose(self) -> None:
        await self._client.close()


def _message(message: Message) -> MessageParam:
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _input_tokens(usage: AnthropicUsage) -> int:
    """All prompt tokens, cached or not (Anthropic counts cache reads and writes separately)."""
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return usage.input_tokens + cached


def create(config: ModelConfig) -> Provider:
    """Factory for ``provider = "anthropic"``.

    ``model`` is the Claude model id (defaults to the configured name); ``base_url`` overrides the
    API address; ``api_key_env`` names the variable holding the key (usually ``ANTHROPIC_API_KEY``).
    """
    env = config.api_key_env
    api_key = os.environ.get(env) if env else None
    timeout_s = config.options.get("timeout_s")
    return AnthropicProvider(
        config.name,
        config.model or config.name,
        base_url=config.base_url,
        api_key=api_key,
        default_max_tokens=config.max_tokens_cap or DEFAULT_MAX_TOKENS,
        timeout_s=None if timeout_s is None else float(timeout_s),
        missing_key_env=env if env and not api_key else None,
    )
