from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from sluiceway.errors import InvalidRequestError
from sluiceway.providers import registry as registry_module
from sluiceway.providers.base import (
    ModelConfig,
    Option,
    Provider,
    ProviderConfigError,
    declared_options,
    declares_options,
    options_check,
)
from sluiceway.providers.echo import EchoProvider
from sluiceway.providers.registry import BUILTIN_CHECKS, GROUP, ProviderRegistry


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


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ModelConfig("x", "nosuch"), "models.x.provider: unknown provider 'nosuch' (known: anthropic, echo"),
        (
            ModelConfig("x", "echo", options={"delay_ms": "slow"}),
            "models.x.delay_ms: must be a number, got 'slow'",
        ),
        (ModelConfig("x", "echo", options={"delay_ms": True}), "models.x.delay_ms: must be a number"),
        (ModelConfig("x", "echo", options={"delay_ms": -1}), "models.x.delay_ms: must be a number >= 0"),
        (
            ModelConfig("x", "echo", options={"delay_m": 500}),
            "models.x.delay_m: unknown option for provider 'echo'",
        ),
        (
            ModelConfig("x", "echo", options={"fail_after": 1.5}),
            "models.x.fail_after: must be a whole number",
        ),
        (ModelConfig("x", "echo", options={"fail_code": 3}), "models.x.fail_code: must be a string"),
        (ModelConfig("x", "openai", options={"timeout_s": 0}), "models.x.timeout_s: must be a number > 0"),
        (
            ModelConfig("x", "openai", options={"stream_usage": "no"}),
            "models.x.stream_usage: must be true or",
        ),
        (ModelConfig("x", "anthropic", options={"base": "u"}), "models.x.base: unknown option for provider"),
        (ModelConfig("x", "local", options={"n_ctx": "big"}), "models.x.n_ctx: must be a whole number >= 1"),
    ],
)
def test_check_names_the_key_before_anything_loads(config: ModelConfig, message: str) -> None:
    registry = ProviderRegistry.from_entry_points()
    with pytest.raises(ProviderConfigError) as info:
        registry.check(config)
    assert str(info.value).startswith(message)
    with pytest.raises(ProviderConfigError):  # create checks too: the model is unavailable, saying why
        registry.create(config)


def test_good_options_pass_the_check() -> None:
    registry = ProviderRegistry.from_entry_points()
    registry.check(ModelConfig("e", "echo", options={"delay_ms": 1.5, "fail_after": 0, "fail_code": "x"}))
    registry.check(ModelConfig("o", "openai", options={"timeout_s": 5, "stream_usage": False}))
    registry.check(ModelConfig("l", "local", options={"model_path": None, "n_ctx": 512}))


def test_a_plug_in_kind_is_checked_only_with_its_own_check() -> None:
    registry = ProviderRegistry()
    registry.register("free", lambda config: EchoProvider())
    registry.check(ModelConfig("f", "free", options={"anything": object()}))
    registry.register("strict", lambda config: EchoProvider(), options_check({"level": Option("count")}))
    with pytest.raises(ProviderConfigError, match=r"models\.s\.level: must be a whole number >= 0"):
        registry.check(ModelConfig("s", "strict", options={"level": -1}))


def test_a_factorys_value_error_names_the_model() -> None:
    registry = ProviderRegistry()

    def fussy(config: ModelConfig) -> Provider:
        raise ValueError("could not convert string to float: 'slow'")

    registry.register("fussy", fussy)
    with pytest.raises(ProviderConfigError, match=r"^models\.f: could not convert"):
        registry.create(ModelConfig("f", "fussy"))


def test_builtin_kinds_declare_their_options_beside_their_factories() -> None:
    from sluiceway.providers import echo, local

    assert declared_options(echo.create) is echo.OPTIONS
    assert declared_options(local.create) is local.check_options
    assert not {"echo", "local"} & set(BUILTIN_CHECKS)


def test_a_plug_in_factory_declares_its_options() -> None:
    @declares_options(options_check({"level": Option("count")}))
    def strict(config: ModelConfig) -> Provider:
        return EchoProvider()

    registry = ProviderRegistry()
    registry.register("strict", strict)
    registry.check(ModelConfig("s", "strict", options={"level": 2}))
    with pytest.raises(ProviderConfigError, match=r"models\.s\.level: must be a whole number >= 0"):
        registry.check(ModelConfig("s", "strict", options={"level": -1}))
    registry.register("strict", strict, options_check({}))  # an explicit check wins
    with pytest.raises(ProviderConfigError, match=r"models\.s\.level: unknown option"):
        registry.check(ModelConfig("s", "strict", options={"level": 2}))


def test_an_entry_points_declared_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = [
        EntryPoint("parrot", "sluiceway.providers.echo:create", GROUP),
        EntryPoint("broken", "sluiceway_no_such_plugin:create", GROUP),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: installed)
    registry = ProviderRegistry.from_entry_points()
    with pytest.raises(
        ProviderConfigError, match=r"models\.p\.delay_m: unknown option for provider 'parrot'"
    ):
        registry.check(ModelConfig("p", "parrot", options={"delay_m": 5}))
    registry.check(ModelConfig("b", "broken", options={"any": 1}))  # cannot be imported: not checked
    with pytest.raises(ImportError):  # ... and cannot be created (the model is unavailable)
        registry.create(ModelConfig("b", "broken"))
