"""``openai``: any OpenAI-compatible Chat Completions server, through the official ``openai`` SDK.

How it works: one ``AsyncOpenAI`` client per configured model (retries off: the relay decides about
retries and fallbacks). ``stream`` opens ``chat.completions.create(stream=True)`` inside
``async with``, so when the relay cancels the task or closes the generator, the SDK closes the HTTP
response and the upstream sees the disconnect and stops generating. The finish chunk comes before
the usage chunk, so both are held and emitted after the last delta. SDK failures are translated once,
in :meth:`OpenAIProvider.stream`, by :mod:`sluiceway.providers._sdk_errors`.

Options (``[models.NAME.options]``): ``timeout_s`` for the HTTP client; ``stream_usage = false`` for
compatible servers that reject ``stream_options`` (usage is then simply not reported).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from sluiceway.errors import SluicewayError, UpstreamError
from sluiceway.events import Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.providers import _sdk_errors
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.requests import ChatRequest, Message

KEYLESS_PLACEHOLDER = "sk-no-key-required"
"""Sent when a model has no ``api_key_env`` (Ollama, vLLM and llama.cpp servers ignore it)."""

_SDK_ERRORS: tuple[type[Exception], ...] = (openai.APIError, *_sdk_errors.TRANSPORT_ERRORS)
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class OpenAIProvider:
    """Streams chat completions from one OpenAI-compatible endpoint and model."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float | None = None,
        stream_usage: bool = True,
        missing_key_env: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.stream_usage = stream_usage
        self._api_key = api_key
        self._missing_key_env = missing_key_env
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or KEYLESS_PLACEHOLDER,
            max_retries=0,
            timeout=openai.NOT_GIVEN if timeout_s is None else timeout_s,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if self._missing_key_env is not None:
            raise _sdk_errors.missing_key(self.name, self._missing_key_env)
        finish_reason: str | None = None
        usage: Usage | None = None
        try:
            chunks = await self._open(request)
            async with chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield TextDelta(choice.delta.content)
                        finish_reason = choice.finish_reason or finish_reason
        except _SDK_ERRORS as exc:
            raise self._translate(exc) from exc
        if finish_reason is None:
            raise UpstreamError(f"model {self.name!r}: upstream ended the stream without a finish reason")
        if usage is not None:
            yield usage
        yield Finish(_FINISH.get(finish_reason, "stop"))

    async def _open(self, request: ChatRequest) -> openai.AsyncStream[ChatCompletionChunk]:
        return await self._client.chat.completions.create(
            model=self.model,
            messages=[_message(m) for m in request.messages],
            stream=True,
            stream_options={"include_usage": True} if self.stream_usage else openai.omit,
            max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
            temperature=openai.omit if request.temperature is None else request.temperature,
            stop=list(request.stop) if request.stop else openai.omit,
        )

    def _translate(self, exc: Exception) -> SluicewayError:
        if isinstance(exc, openai.APITimeoutError):
            return _sdk_errors.timed_out(self.name)
        if isinstance(exc, openai.APIConnectionError):
            return _sdk_errors.unreachable(self.name)
        if isinstance(exc, openai.APIStatusError):
            return _sdk_errors.from_status(
                exc.status_code, exc.response.headers, exc.body, model=self.name, secret=self._api_key
            )
        if isinstance(exc, openai.APIError):
            return _sdk_errors.from_stream_error(exc.body, model=self.name, secret=self._api_key)
        return _sdk_errors.from_transport(exc, model=self.name)

    async def aclose(self) -> None:
        await self._client.close()


def _message(message: Message) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def create(config: ModelConfig) -> Provider:
    """Factory for ``provider = "openai"``.

    ``model`` is the upstream model id (defaults to the configured name); ``base_url`` points at any
    compatible server (``http://127.0.0.1:11434/v1`` for Ollama); ``api_key_env`` names the variable
    holding the key (leave it out for keyless local servers).
    """
    env = config.api_key_env
    api_key = os.environ.get(env) if env else None
    timeout_s = config.options.get("timeout_s")
    return OpenAIProvider(
        config.name,
        config.model or config.name,
        base_url=config.base_url,
        api_key=api_key,
        timeout_s=None if timeout_s is None else float(timeout_s),
        stream_usage=bool(config.options.get("stream_usage", True)),
        missing_key_env=env if env and not api_key else None,
    )
