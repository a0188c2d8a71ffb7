"""Provider kinds by name, found through the ``sluiceway.providers`` entry point group.

Built-in kinds (``echo``, ``local``, ``openai``, ``anthropic``) are declared in sluiceway's own
``pyproject.toml`` under that group, exactly as a third-party plug-in declares its own.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from sluiceway.errors import InvalidRequestError
from sluiceway.providers.base import ModelConfig, Provider, ProviderFactory

GROUP = "sluiceway.providers"


class ProviderRegistry:
    """Maps a provider kind (``provider = "openai"``) to the factory that builds it."""

    def __init__(self, factories: dict[str, ProviderFactory] | None = None) -> None:
        self._factories: dict[str, ProviderFactory | EntryPoint] = dict(factories or {})

    @classmethod
    def from_entry_points(cls) -> ProviderRegistry:
        """A registry holding every installed kind, built-in or plug-in (imported when first used)."""
        registry = cls()
        for ep in entry_points(group=GROUP):
            registry._factories[ep.name] = ep
        return registry

    def register(self, kind: str, factory: ProviderFactory) -> None:
        """Add or replace the factory for ``kind``."""
        self._factories[kind] = factory

    @property
    def kinds(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._factories)

    def create(self, config: ModelConfig) -> Provider:
        """Build the provider for one configured model."""
        factory = self._factories.get(config.provider)
        if factory is None:
            known = ", ".join(self.kinds)
            raise InvalidRequestError(
                f"models.{config.name}.provider: unknown provider {config.provider!r} (known: {known})"
            )
        if isinstance(factory, EntryPoint):
            factory = self._factories[config.provider] = factory.load()
        return factory(config)
