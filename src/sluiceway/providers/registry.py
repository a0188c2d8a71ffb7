"""Provider kinds by name, found through the ``sluiceway.providers`` entry point group.

Built-in kinds (``echo``, ``local``, ``openai``, ``anthropic``) are declared in sluiceway's own
``pyproject.toml`` under that group, exactly as a third-party plug-in declares its own.

:meth:`ProviderRegistry.check` validates a model's configuration without loading it (the kind is
known; its options are known and of the right type), so ``sluiceway serve`` can refuse a bad file
before anything starts. A kind's check is the one given to :meth:`ProviderRegistry.register`, else
the one its factory declares with :func:`~sluiceway.providers.base.declares_options` (``echo`` and
``local`` do, in their own modules; finding it imports the factory's module, never a model). A kind
with neither takes its options unchecked.
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
    declared_options,
    options_check,
)

GROUP = "sluiceway.providers"

BUILTIN_CHECKS: dict[str, OptionCheck] = {
    "openai": options_check({"timeout_s": Option("positive"), "stream_usage": Option("boolean")}),
    "anthropic": options_check({"timeout_s": Option("positive")}),
}
"""The option checks of the built-in SDK kinds, whose factories declare none yet (their modules
document the options); ``echo`` and ``local`` declare theirs on their factories."""


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
        """Add or replace the factory for ``kind``, with the check of its options: ``options``, else
        the one ``factory`` declares, if any."""
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
        check = self._check_for(config.provider)
        if check is not None:
            check(config)

    def create(self, config: ModelConfig) -> Provider:
        """Check and build the provider for one configured model (a factory's ``ValueError`` or
        ``TypeError`` about its options comes out as :class:`ProviderConfigError` naming the model)."""
        self.check(config)
        factory = self._factory(config.provider)
        try:
            return factory(config)
        except ProviderConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ProviderConfigError(f"models.{config.name}: {exc}") from exc

    def _factory(self, kind: str) -> ProviderFactory:
        """The factory of ``kind``, importing an entry point's module the first time."""
        factory = self._factories[kind]
        if isinstance(factory, EntryPoint):
            factory = self._factories[kind] = factory.load()
        return factory

    def _check_for(self, kind: str) -> OptionCheck | None:
        """The check registered for ``kind``, else the one its factory declares.

        A plug-in whose module cannot be imported has no check here: ``create`` reports the
        ``ImportError``, and the model is unavailable rather than the configuration wrong."""
        if kind in self._checks:
            return self._checks[kind]
        try:
            return declared_options(self._factory(kind))
        except ImportError:
            return None
