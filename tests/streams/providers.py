"""Test-only providers, registered through ``ProviderRegistry.register`` like any other kind.

``counting``  echo-like, one word per ``delay_ms``; records when each token was produced and when
              (and how) the generator stopped - the probe for "the provider really stopped".
``scripted``  plays a script of steps; attempts are counted per model name, so retries and
              fallbacks can be followed (``fail`` steps raise the given error code).
``flood``     ``count`` deltas of ``size`` characters as fast as it can (memory bound tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sluiceway.errors import UpstreamError, error_from_code
from sluiceway.events import Event, Finish, TextDelta, Usage
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.echo import split_words
from sluiceway.providers.registry import ProviderRegistry
from sluiceway.requests import ChatRequest


@dataclass
class Probe:
    """What a counting provider did, readable from the test thread."""

    produced: list[float] = field(default_factory=list)
    started: int = 0
    stopped_at: float | None = None
    how: str | None = None  # "finished", "cancelled" (at an await) or "closed" (at a yield: aclose)

    def after(self, moment: float) -> int:
        """Tokens produced after ``moment`` (a ``time.monotonic()`` value)."""
        return sum(1 for t in self.produced if t > moment)


class CountingProvider:
    """Echo the last user message word by word, ``delay_ms`` before each word, recording everything."""

    def __init__(self, probe: Probe, delay_ms: float) -> None:
        self.probe = probe
        self.delay = delay_ms / 1000

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        words = split_words(request.last_user_text)
        self.probe.started += 1
        self.probe.how = None
        yield Usage(len(words), 0)
        try:
            for word in words:
                await asyncio.sleep(self.delay)
                self.probe.produced.append(time.monotonic())
                yield TextDelta(word)
            self.probe.how = "finished"
        except asyncio.CancelledError:
            self.probe.how = "cancelled"
            raise
        except GeneratorExit:
            self.probe.how = "closed"
            raise
        finally:
            self.probe.stopped_at = time.monotonic()
        yield Usage(len(words), len(words))
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


@dataclass
class Script:
    """Steps for ``scripted`` models by name: ``("text", s)``, ``("sleep", s)``, ``("fail", code,
    retry_after)``, ``("refuse",)`` (the upstream's 4xx refusal of the request); a list of scripts is
    played one per attempt (the last one repeats)."""

    plays: dict[str, list[list[tuple[Any, ...]]]] = field(default_factory=dict)
    attempts: dict[str, list[float]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)


class ScriptedProvider:
    """Plays the script of its model name, attempt by attempt."""

    def __init__(self, name: str, script: Script) -> None:
        self.name = name
        self.script = script

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        attempts = self.script.attempts.setdefault(self.name, [])
        attempts.append(time.monotonic())
        plays = self.script.plays[self.name]
        steps = plays[min(len(attempts), len(plays)) - 1]
        yield Usage(7, 0)
        produced = 0
        try:
            for step in steps:
                if step[0] == "text":
                    produced += 1
                    yield TextDelta(step[1])
                elif step[0] == "sleep":
                    await asyncio.sleep(step[1])
                elif step[0] == "fail":
                    raise error_from_code(step[1], f"scripted {step[1]}", step[2] if len(step) > 2 else None)
                elif step[0] == "refuse":
                    raise UpstreamError("scripted refusal: HTTP 404", retryable=False)
        except asyncio.CancelledError:
            self.script.cancelled.append(self.name)
            raise
        yield Usage(7, produced)
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


class FloodProvider:
    """``count`` deltas of ``size`` fresh characters each, yielding to the loop between them."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        yield Usage(1, 0)
        for i in range(self.count):
            await asyncio.sleep(0)
            yield TextDelta(chr(ord("a") + i % 26) * self.size)
        yield Usage(1, self.count)
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


def counting_factory(probes: dict[str, Probe]) -> Callable[[ModelConfig], Provider]:
    """A factory whose providers record into ``probes[model name]``."""

    def create(config: ModelConfig) -> Provider:
        probe = probes.setdefault(config.name, Probe())
        return CountingProvider(probe, float(config.options.get("delay_ms", 50)))

    return create


def flood_factory(config: ModelConfig) -> Provider:
    """``provider = "flood"`` with options ``count`` and ``size``."""
    return FloodProvider(int(config.options.get("count", 1000)), int(config.options.get("size", 1024)))


def registry_with(probes: dict[str, Probe] | None = None, script: Script | None = None) -> ProviderRegistry:
    """The installed providers plus ``counting``, ``scripted`` and ``flood``."""
    registry = ProviderRegistry.from_entry_points()
    registry.register("counting", counting_factory(probes if probes is not None else {}))
    scripted = script if script is not None else Script()
    registry.register("scripted", lambda config: ScriptedProvider(config.name, scripted))
    registry.register("flood", flood_factory)
    return registry
