"""The models one server serves: built from settings at start-up, closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import replace

from sluiceway.errors import SluicewayError, UnknownModelError
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.registry import ProviderRegistry
from sluiceway.server.settings import Settings

logger = logging.getLogger("sluiceway.server")


class ModelSet:
    """Named, ready providers. ``unavailable`` says why a configured model could not load."""

    def __init__(self, settings: Settings, registry: ProviderRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.providers: dict[str, Provider] = {}
        self.configs: dict[str, ModelConfig] = {}
        self.unavailable: dict[str, str] = {}
        self.default = settings.default_model

    def load(self) -> None:
        """Create every configured provider (the embedded model loads here, once)."""
        for name in self.settings.model_names():
            config = self.settings.models[name]
            try:
                self.providers[name] = self.registry.create(config)
                self.configs[name] = config
            except (ImportError, FileNotFoundError, SluicewayError, OSError, ValueError) as exc:
                self.unavailable[name] = str(exc) or type(exc).__name__
                logger.warning("model %s unavailable: %s", name, self.unavailable[name])
        if self.default not in self.providers and "echo" in self.providers and self._may_fall_back():
            logger.warning("default model %s unavailable; using echo", self.default)
            self.default = "echo"

    def _may_fall_back(self) -> bool:
        """Whether an unavailable default gives way to ``echo``: only the implicit one (``local``, left
        unconfigured: a gateway installed without ``[local]``). A default the user chose (by
        ``default_model`` or its ``[models.NAME]`` table), or ``local`` with a ``model_path`` that
        does not load, is a configuration error instead (``sluiceway serve`` exits 2), so nothing
        falls back and no log line says it does."""
        settings = self.settings
        return not settings.default_chosen() and not (
            settings.is_explicit("model_path") and "local" in self.unavailable
        )

    def resolve(self, name: str | None) -> tuple[ModelConfig, Provider]:
        """The config and provider for ``name`` (the default when ``None``)."""
        key = name or self.default
        provider = self.providers.get(key)
        if provider is None:
            if key in self.unavailable:
                raise UnknownModelError(f"model {key!r} is configured but unavailable on this server")
            raise UnknownModelError(f"unknown model {key!r}; see GET /v1/models")
        return self.configs[key], provider

    def cap_max_tokens(self, config: ModelConfig, max_tokens: int | None) -> int | None:
        """Apply the model's ``max_tokens_cap``."""
        cap = config.max_tokens_cap
        if cap is None:
            return max_tokens
        return cap if max_tokens is None else min(max_tokens, cap)

    def with_config(self, config: ModelConfig) -> ModelConfig:
        """A copy for tests and reloads."""
        return replace(config)

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self.providers.values():
            await provider.aclose()
