"""The provider contract: one method that turns a request into events.

How cancellation works: the relay iterates ``provider.stream(request)`` inside a task. To stop a
generation it cancels that task (or calls ``aclose()`` on the iterator); the provider's generator
sees ``CancelledError``/``GeneratorExit`` at its current ``await``/``yield`` and must release its
upstream there (``async with`` around the SDK stream; for ``local`` a flag the worker thread checks
before each token). Providers raise :class:`~sluiceway.errors.SluicewayError` subclasses for failures;
the relay turns them into ``ErrorEvent`` + ``Finish("error")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sluiceway.events import Event
from sluiceway.requests import ChatRequest


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One named model from the configuration (``[models.NAME]``)."""

    name: str
    provider: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    fallbacks: tuple[str, ...] = ()
    max_tokens_cap: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """A source of model output.

    ``stream`` yields, in order: optionally an early ``Usage`` (input tokens known), ``TextDelta``
    pieces, a final ``Usage``, and one ``Finish``. Failures are raised as ``SluicewayError``.
    """

    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Generate the answer to ``request`` as events."""
        ...

    async def aclose(self) -> None:
        """Release clients, threads and model memory."""
        ...


ProviderFactory = Callable[[ModelConfig], Provider]
