from __future__ import annotations

import pytest

from sluiceway.errors import InvalidRequestError
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.echo import EchoProvider
from sluiceway.providers.registry import ProviderRegistry


def test_builtins_are_entry_points() -> None:
    registry = ProviderRegistry.from_entry_points()
    assert {"echo", "local", "openai", "anthropic"} <= set(registry.kinds)
    assert isinstance(registry.create(ModelConfig("e", "echo")), EchoProvider)


def test_third_party_registration() -> None:
    registry = ProviderRegistry()
    made: list[str] = []

    def factory(config: ModelConfig) -> Provider:
        made.append(config.name)
        return EchoProvider()

    registry.register("mine", factory)
    registry.create(ModelConfig("m", "mine"))
    assert made == ["m"]


def test_unknown_kind_names_the_key() -> None:
    with pytest.raises(InvalidRequestError, match=r"models\.x\.provider"):
        ProviderRegistry().create(ModelConfig("x", "nope"))
