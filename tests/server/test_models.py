"""The server's models: loading them, and when an unavailable default gives way to ``echo``."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.registry import ProviderRegistry
from sluiceway.server.models import ModelSet
from sluiceway.server.settings import Settings, load_settings

FALLBACK = "unavailable; using echo"


def broken(config: ModelConfig) -> Provider:
    raise FileNotFoundError(f"no weights for {config.name}")


def registry() -> ProviderRegistry:
    registry = ProviderRegistry.from_entry_points()
    registry.register("broken", broken)
    return registry


def settings_with(models: dict[str, ModelConfig], **overrides: Any) -> Settings:
    settings = load_settings(None, env={}, overrides=overrides)
    return replace(settings, models={**settings.models, **models})


def loaded(settings: Settings, caplog: pytest.LogCaptureFixture) -> tuple[ModelSet, str]:
    models = ModelSet(settings, registry())
    with caplog.at_level(logging.WARNING, "sluiceway.server"):
        models.load()
    return models, caplog.text


def test_the_implicit_default_falls_back_to_echo_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    models, log = loaded(settings_with({"local": ModelConfig("local", "broken")}), caplog)
    assert models.default == "echo" and "local" in models.unavailable
    assert f"default model local {FALLBACK}" in log


@pytest.mark.parametrize(
    ("models", "overrides"),
    [
        ({"local": ModelConfig("local", "broken")}, {"default_model": "local"}),
        ({"local": ModelConfig("local", "broken")}, {"model_path": "/nowhere/model.gguf"}),
    ],
    ids=["default_model", "model_path"],
)
def test_a_chosen_default_that_fails_does_not_claim_a_fallback(
    models: dict[str, ModelConfig], overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_with(models, **overrides)
    loaded_models, log = loaded(settings, caplog)
    assert loaded_models.default == settings.default_model  # serve refuses to start: nothing to fall to
    assert FALLBACK not in log and "unavailable" in log  # the model's own failure is still logged
