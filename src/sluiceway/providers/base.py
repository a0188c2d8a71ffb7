"""The provider contract: one method that turns a request into events.

How cancellation works: the relay iterates ``provider.stream(request)`` inside a task. To stop a
generation it cancels that task (or calls ``aclose()`` on the iterator); the provider's generator
sees ``CancelledError``/``GeneratorExit`` at its current ``await``/``yield`` and must release its
upstream there (``async with`` around the SDK stream; for ``local`` a flag the worker thread checks
before each token). Providers raise :class:`~sluiceway.errors.SluicewayError` subclasses for failures;
the relay turns them into ``ErrorEvent`` + ``Finish("error")``.

Options are checked before anything loads: a kind may come with an :data:`OptionCheck` (for a simple
table of typed options, :func:`options_check` builds one from :class:`Option` values), so that a typo
or a wrong type stops the server at start with the key named, not a model that silently ignores it.
A provider module declares its check on its factory with :func:`declares_options`, next to the code
that reads the options; the registry finds it there, for built-in and plug-in kinds alike.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

from sluiceway.errors import InvalidRequestError
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


class ProviderConfigError(InvalidRequestError):
    """A model's configuration does not suit its provider; the message names the key."""


OptionCheck: TypeAlias = Callable[[ModelConfig], None]
"""Validates a model's options without loading anything; raises :class:`ProviderConfigError`."""

OptionKind: TypeAlias = Literal["number", "positive", "count", "string", "boolean"]


@dataclass(frozen=True, slots=True)
class Option:
    """One provider option's type: a ``number`` (>= 0), a ``positive`` number, a ``count`` (a whole
    number >= 0), a ``string`` or a ``boolean``. Booleans are never numbers."""

    kind: OptionKind

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` for this option, or ``None``."""
        if self.kind == "string":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "count":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            return None if ok else "must be a whole number >= 0"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a number"
        if self.kind == "positive":
            return None if value > 0 else "must be a number > 0"
        return None if value >= 0 else "must be a number >= 0"


def options_check(spec: Mapping[str, Option]) -> OptionCheck:
    """An :data:`OptionCheck` that allows exactly the options of ``spec``, each of its type."""

    def check(config: ModelConfig) -> None:
        where = f"models.{config.name}"
        unknown = sorted(set(config.options) - set(spec))
        if unknown:
            known = ", ".join(sorted(spec)) or "none"
            raise ProviderConfigError(
                f"{where}.{unknown[0]}: unknown option for provider {config.provider!r} (known: {known})"
            )
        for key, value in config.options.items():
            problem = spec[key].problem(value)
            if problem is not None:
                raise ProviderConfigError(f"{where}.{key}: {problem}, got {value!r}")

    return check


_OPTIONS_ATTRIBUTE = "sluiceway_options"

F = TypeVar("F", bound=ProviderFactory)


def declares_options(check: OptionCheck) -> Callable[[F], F]:
    """Decorate a provider factory with the :data:`OptionCheck` of its options.

    The registry runs the check before the factory (``sluiceway serve`` runs it at start, before any
    model loads), so the options are declared once, beside the code that reads them::

        @declares_options(options_check({"level": Option("count")}))
        def create(config: ModelConfig) -> Provider: ...
    """

    def declare(factory: F) -> F:
        setattr(factory, _OPTIONS_ATTRIBUTE, check)
        return factory

    return declare


def declared_options(factory: ProviderFactory) -> OptionCheck | None:
    """The option check ``factory`` declares with :func:`declares_options`, or ``None``."""
    check = getattr(factory, _OPTIONS_ATTRIBUTE, None)
    return check if callable(check) else None
