from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.server.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluiceway.toml"
    path.write_text(text)
    return path


def test_defaults_have_local_and_echo() -> None:
    settings = load_settings(None, env={})
    assert settings.default_model == "local"
    assert {"local", "echo"} <= set(settings.models)
    assert settings.port == 8000 and settings.host == "127.0.0.1"


def test_toml_env_and_flags_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'port = 9000\ndefault_model = "fast"\n'
        '[models.fast]\nprovider = "openai"\nmodel = "gpt-x"\nbase_url = "http://127.0.0.1:1/v1"\n'
        'api_key_env = "K"\nfallbacks = ["echo"]\n',
    )
    settings = load_settings(path, env={"SLUICEWAY_PORT": "9100"}, overrides={"echo_delay_ms": 5})
    assert settings.port == 9100
    fast = settings.models["fast"]
    got = (fast.provider, fast.model, fast.api_key_env, fast.fallbacks)
    assert got == ("openai", "gpt-x", "K", ("echo",))
    assert settings.models["echo"].options["delay_ms"] == 5
    assert settings.model_names()[0] == "fast"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 1", "unknown key 'prot'"),
        ('port = "abc"', "port"),
        ("heartbeat_s = -1", "heartbeat_s"),
        ('disconnect_policy = "maybe"', "disconnect_policy"),
        ("[models.x]\nmodel = 'm'", "models.x.provider: required"),
        ("[models.x]\nprovider = 'openai'\nfallbacks = 'y'", "models.x.fallbacks"),
        ("[models.x]\nprovider = 'openai'\nfallbacks = ['nope']", "models.x.fallbacks: unknown model 'nope'"),
        ("[models.x]\nprovider = 'openai'\nbase_url = 5", "models.x.base_url"),
        ("[models.x]\nprovider = 'openai'\nmax_tokens_cap = 0", "models.x.max_tokens_cap"),
        ('default_model = "ghost"', "default_model: unknown model 'ghost'"),
        ("port = [", "not valid TOML"),
        ("models = 3", "models"),
    ],
)
def test_invalid_config_names_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_settings(write(tmp_path, text), env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/sluiceway.toml", env={})


def test_env_error_names_variable() -> None:
    with pytest.raises(ConfigError, match="SLUICEWAY_PORT"):
        load_settings(None, env={"SLUICEWAY_PORT": "x"})
