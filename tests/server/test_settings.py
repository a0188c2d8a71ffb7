from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluiceway.server.settings import RANGES, SCALAR_FIELDS, ConfigError, load_settings


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
        ("heartbeat_s = -1", "heartbeat_s: must be >= 0, got -1"),
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


NUMERIC = {
    name: (str(f.type), RANGES.get(name, (0, None)))
    for name, f in SCALAR_FIELDS.items()
    if str(f.type) in ("int", "float")
}


def test_every_numeric_setting_is_in_the_table() -> None:
    """A new numeric setting gets a range check (and a row in the table below) by being one."""
    assert set(NUMERIC) == {
        "port", "echo_delay_ms", "disconnect_grace_s", "retention_s", "heartbeat_s", "ttft_timeout_s",
        "idle_timeout_s", "total_timeout_s", "retries", "retry_backoff_s", "max_concurrent",
        "max_concurrent_per_model", "max_stream_bytes", "shutdown_grace_s", "max_body_bytes",
        "max_messages", "max_message_chars",
    }  # fmt: skip


def wrong_values(kind: str, low: float, high: float | None) -> list[object]:
    """Values every setting of this kind and range refuses."""
    wrong: list[object] = [True, False, "many", [1], float("nan"), float("inf"), low - 1]
    if high is not None:
        wrong.append(high + 1)
    if kind == "int":
        wrong += [low + 0.5, float(low + 1)]
    return wrong


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, value) for key, (kind, (low, high)) in NUMERIC.items() for value in wrong_values(kind, low, high)],
)
def test_numeric_settings_refuse_wrong_types_and_out_of_range(key: str, value: object) -> None:
    flag = "--" + key.replace("_", "-")  # overrides take any Python value, as the file's TOML types
    with pytest.raises(ConfigError, match=rf"^{flag}: must be"):
        load_settings(None, env={}, overrides={key: value})


@pytest.mark.parametrize(("key", "limits"), [(key, limits) for key, (_, limits) in NUMERIC.items()])
def test_numeric_settings_take_their_bounds(key: str, limits: tuple[float, float | None]) -> None:
    low, high = limits
    for value in (int(low), int(high if high is not None else low + 1000)):
        assert getattr(load_settings(None, env={}, overrides={key: value}), key) == value


def test_numeric_settings_from_the_file_name_the_key(tmp_path: Path) -> None:
    cases = {
        "port = true": "port: must be a whole number, got True",
        "port = 8632.9": "port: must be a whole number, got 8632.9",
        "port = 99999": "port: must be from 1 to 65535, got 99999",
        "echo_delay_ms = true": "echo_delay_ms: must be a number, got True",
        "max_concurrent = -4": "max_concurrent: must be >= 0, got -4",
        "retries = -1": "retries: must be >= 0, got -1",
        "max_messages = 0": "max_messages: must be >= 1, got 0",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_settings(write(tmp_path, text), env={})
        assert str(info.value) == message


def test_numbers_from_the_environment_are_parsed_and_checked() -> None:
    assert load_settings(None, env={"SLUICEWAY_HEARTBEAT_S": "0.5"}).heartbeat_s == 0.5
    assert load_settings(None, env={"SLUICEWAY_MAX_CONCURRENT": " 3 "}).max_concurrent == 3
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_RETRIES: must be a whole number, got '1.5'$"):
        load_settings(None, env={"SLUICEWAY_RETRIES": "1.5"})
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_PORT: must be from 1 to 65535, got '0'$"):
        load_settings(None, env={"SLUICEWAY_PORT": "0"})


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda tmp: tmp, "is a directory, not a file"),
        (
            lambda tmp: (tmp / "bad.toml").write_bytes(b"port = 1 # \xe9\n") and tmp / "bad.toml",
            "is not UTF-8",
        ),
    ],
)
def test_an_unreadable_file_is_a_config_error(tmp_path: Path, setup: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(setup(tmp_path), env={})


def test_model_options_go_in_the_table_or_its_options_table(tmp_path: Path) -> None:
    flat = write(tmp_path, '[models.x]\nprovider = "echo"\ndelay_ms = 5\n')
    assert load_settings(flat, env={}).models["x"].options == {"delay_ms": 5}
    nested = write(tmp_path, '[models.x]\nprovider = "echo"\noptions = { delay_ms = 5 }\n')
    assert load_settings(nested, env={}).models["x"].options == {"delay_ms": 5}
    both = write(tmp_path, '[models.x]\nprovider = "echo"\ndelay_ms = 1\noptions = { delay_ms = 5 }\n')
    with pytest.raises(ConfigError, match=r"models\.x\.delay_ms: set both"):
        load_settings(both, env={})


def test_sources_say_which_settings_were_chosen(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_model = "x"\n[models.x]\nprovider = "echo"\n')
    settings = load_settings(path, env={"SLUICEWAY_RETRIES": "1"}, overrides={"port": 9001})
    assert settings.sources == {
        "default_model": "config",
        "models.x": "config",
        "retries": "SLUICEWAY_RETRIES",
        "port": "--port",
    }
    assert settings.is_explicit("default_model") and not settings.is_explicit("model_path")
    assert not load_settings(None, env={}).sources
