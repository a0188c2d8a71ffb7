"""Provider kinds by name, found through the ``sluiceway.providers`` entry point group.

Built-in kinds (``echo``, ``local``, ``openai``, ``anthropic``) are declared in sluiceway's own
``pyproject.toml`` under that group, exactly as a third-party plug-in declares its own.

:meth:`ProviderRegistry.check` validates a model's configuration without loading it (the kind is
known; its options are known and of the right type), so ``sluiceway serve`` can refuse a bad file
before anything starts. A kind registered without an option check takes its options unchecked.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from sluiceway.providers.base import (
    ModelConfig,
    Option,
    OptionCheck,
    Provider,
    ProviderConfigError,
    ProviderFactory,
    options_check,
)

GROUP = "sluiceway.providers"


def _check_local(config: ModelConfig) -> None:
    from sluiceway.providers.local import LocalSettings  # no llama.cpp import: only the settings

    LocalSettings.from_config(config)


BUILTIN_CHECKS: dict[str, OptionCheck] = {
    "echo": options_check(
        {"delay_ms": Option("number"), "fail_after": Option("count"), "fail_code": Option("string")}
    ),
    "openai": options_check({"timeout_s": Option("positive"), "stream_usage": Option("boolean")}),
    "anthropic": options_check({"timeout_s": Option("positive")}),
    "local": _check_local,
}
"""The option checks of the built-in kinds (their factories' modules document the options)."""


class ProviderRegistry:
    """Maps a provider kind (``provider = "openai"``) to the factory that builds it."""

    def __init__(self, factories: dict[str, ProviderFactory] | None = None) -> None:
        self._factories: dict[str, ProviderFactory | EntryPoint] = dict(factories or {})
        self._checks: dict[str, OptionCheck] = {}

    @classmethod
    def from_entry_points(cls) -> ProviderRegistry:
        """A registry holding every installed kind, built-in or plug-in (imported when first used)."""
        registry = cls()
        for ep in entry_points(group=GROUP):
            registry._factories[ep.name] = ep
            if ep.name in BUILTIN_CHECKS and ep.value.startswith("sluiceway.providers."):
                registry._checks[ep.name] = BUILTIN_CHECKS[ep.name]
        return registry

    def register(self, kind: str, factory: ProviderFactory, options: OptionCheck | None = None) -> None:
        """Add or replace the factory for ``kind``, with the check of its options if it has one."""
        self._factories[kind] = factory
        if options is None:
            self._checks.pop(kind, None)
        else:
            self._checks[kind] = options

    @property
    def kinds(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._factories)

    def check(self, config: ModelConfig) -> None:
        """Raise :class:`ProviderConfigError` naming the key if ``config`` cannot suit its kind."""
        if config.provider not in self._factories:
            known = ", ".join(self.kinds)
            raise ProviderConfigError(
                f"models.{config.name}.provider: unknown provider {config.provider!r} (known: {known})"
            )
        check = self._checks.get(config.provider)
        if check is not None:
            check(config)

    def create(self, config: ModelConfig) -> Provider:
        """Check and build the provider for one configured model (a factory's ``ValueError`` or
        ``TypeError`` about its options comes out as :class:`ProviderConfigError` naming the model)."""
        self.check(config)
        factory = self._factories[config.provider]
        if isinstance(factory, EntryPoint):
            factory = self._factories[config.provider] = factory.load()
        try:
            return factory(config)
        except ProviderConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ProviderConfigError(f"models.{config.name}: {exc}") from exc
