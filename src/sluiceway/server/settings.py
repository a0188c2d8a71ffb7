"""Server settings from, in rising precedence: defaults, a TOML file, ``SLUICEWAY_*`` variables, CLI flags.

The TOML file holds top-level settings and named models::

    default_model = "local"
    [models.fast]
    provider = "openai"
    model = "gpt-4o-mini"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OPENAI_API_KEY"
    fallbacks = ["local"]

Client API keys (``[[api_keys]]`` tables or ``SLUICEWAY_API_KEYS``) are parsed and hashed by
:func:`sluiceway.server.auth.parse_api_keys`; see docs/security.md.

Two models always exist unless the file redefines them: ``local`` (the embedded SmolLM2, or
``model_path``) and ``echo``. Any problem raises :class:`ConfigError` naming the key. Numbers are
checked by type and range (:data:`RANGES`): a boolean is not a number and an integer setting takes no
fraction. Provider options are checked by the provider registry when the server starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluiceway.providers.base import ModelConfig
from sluiceway.server.auth import ApiKey, parse_api_keys
from sluiceway.streams.hub import DisconnectPolicy

DEFAULT_CONFIG = Path("sluiceway.toml")
MODEL_KEYS = {"provider", "model", "base_url", "api_key_env", "fallbacks", "max_tokens_cap"}
"""The keys every model table has; any other key (or a key of its ``options`` table) is a provider option."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one server needs to know, passed explicitly through ``create_app``."""

    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str = "local"
    model_path: str | None = None
    echo_delay_ms: float = 0.0
    disconnect_policy: DisconnectPolicy = "cancel"
    disconnect_grace_s: float = 5.0
    retention_s: float = 600.0
    heartbeat_s: float = 15.0
    redis_url: str | None = None  # redis://…: stream logs in Redis, shared by every instance
    ttft_timeout_s: float = 60.0  # timeouts (0: off) end a stream with upstream_timeout
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 600.0
    retries: int = 2  # retries of one model before its first token, then its fallbacks
    retry_backoff_s: float = 0.5
    max_concurrent: int = 0  # running generations per process (0: no limit) -> 429 overloaded
    max_concurrent_per_model: int = 0
    max_stream_bytes: int = 8_388_608  # the bounded log of one stream
    shutdown_grace_s: float = 30.0  # SIGTERM: let generations finish this long, then shutting_down
    log_format: str = "text"
    data_dir: str | None = None  # conversations' SQLite file; None: the user's data dir
    database_url: str | None = None  # postgresql://… stores conversations there instead
    max_body_bytes: int = 1_048_576
    max_messages: int = 500
    max_message_chars: int = 200_000
    cors_origins: tuple[str, ...] = ()
    insecure_no_auth: bool = False
    api_keys: tuple[ApiKey, ...] = ()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each setting that is not a default came from: ``"config"``, a variable or a flag."""

    def is_explicit(self, key: str) -> bool:
        """Whether ``key`` was set by the file, the environment or a flag (not left at its default)."""
        return key in self.sources

    def default_chosen(self) -> bool:
        """Whether the user chose the default model (by ``default_model`` or by configuring its
        ``[models.NAME]`` table): one that cannot load is then an error, never replaced by ``echo``."""
        return self.is_explicit("default_model") or self.is_explicit(f"models.{self.default_model}")

    def model_names(self) -> list[str]:
        """Configured model names, the default first."""
        names = sorted(self.models)
        if self.default_model in names:
            names.remove(self.default_model)
            names.insert(0, self.default_model)
        return names


SCALAR_FIELDS = {
    f.name: f for f in dataclasses.fields(Settings) if f.name not in ("models", "api_keys", "sources")
}
RANGES: dict[str, tuple[float, float | None]] = {
    "port": (1, 65535),
    "max_stream_bytes": (1, None),
    "max_body_bytes": (1, None),
    "max_messages": (1, None),
    "max_message_chars": (1, None),
}
"""The allowed ``(minimum, maximum)`` of numeric settings; any other number is ``>= 0`` (0 often means
off or no limit, see docs/configuration.md)."""


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, environment and CLI overrides into validated settings."""
    env = os.environ if env is None else env
    path = Path(config) if config is not None else None
    if path is None and env.get("SLUICEWAY_CONFIG"):
        path = Path(env["SLUICEWAY_CONFIG"])
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    models_raw = raw.pop("models", {})
    keys_raw, keys_where = raw.pop("api_keys", None), "config api_keys"
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in raw.items():
        values[key], sources[key] = _coerce(key, value, key), "config"
    for key in SCALAR_FIELDS:
        env_value = env.get(f"SLUICEWAY_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, env_value, f"SLUICEWAY_{key.upper()}")
            sources[key] = f"SLUICEWAY_{key.upper()}"
    for key, value in (overrides or {}).items():
        if value is not None and key != "api_keys":
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
            sources[key] = f"--{key.replace('_', '-')}"
    if env.get("SLUICEWAY_API_KEYS") is not None:
        keys_raw, keys_where = env["SLUICEWAY_API_KEYS"], "SLUICEWAY_API_KEYS"
    if (overrides or {}).get("api_keys") is not None:
        keys_raw, keys_where = (overrides or {})["api_keys"], "api_keys"
    values["models"] = _models(models_raw, values)
    sources.update({f"models.{name}": "config" for name in models_raw})
    values["api_keys"] = _api_keys(keys_raw, keys_where)
    settings = Settings(**values, sources=sources)
    _check_models(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None


def _coerce(key: str, value: Any, where: str) -> Any:
    """``value`` as the type of setting ``key``; ``where`` (the key, variable or flag) names it in errors."""
    f = SCALAR_FIELDS.get(key)
    if f is None:
        known = ", ".join(sorted([*SCALAR_FIELDS, "models", "api_keys"]))
        raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
    kind = str(f.type)
    try:
        if kind == "int":
            whole = _integer(value)
            _check_range(key, whole)
            return whole
        if kind == "float":
            number = _number(value)
            _check_range(key, number)
            return number
        if kind == "bool":
            return _boolean(value)
        if kind == "tuple[str, ...]":
            return _strings(value)
        if kind == "DisconnectPolicy":
            if value not in ("cancel", "finish"):
                raise ValueError("must be 'cancel' or 'finish'")
            return value
        if key == "log_format" and value not in ("text", "json"):
            raise ValueError("must be 'text' or 'json'")
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}, got {value!r}") from None


def _integer(value: Any) -> int:
    """A whole number: an ``int`` (never a ``bool``) or a string of one (from the environment)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


def _number(value: Any) -> float:
    """A finite number: ``int`` or ``float`` (never a ``bool``) or a string of one (from the environment)."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _check_range(key: str, number: float) -> None:
    low, high = RANGES.get(key, (0, None))
    if number < low or (high is not None and number > high):
        raise ValueError(f"must be from {low:g} to {high:g}" if high is not None else f"must be >= {low:g}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError("must be true or false")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings (or comma-separated)")
    return tuple(v for v in value if v)


def _api_keys(raw: Any, where: str) -> tuple[ApiKey, ...]:
    try:
        return parse_api_keys(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _models(raw: Any, values: Mapping[str, Any]) -> dict[str, ModelConfig]:
    if not isinstance(raw, dict):
        raise ConfigError("models: must be a table of [models.NAME] tables")
    models = {
        "local": ModelConfig("local", "local", options={"model_path": values.get("model_path")}),
        "echo": ModelConfig("echo", "echo", options={"delay_ms": values.get("echo_delay_ms", 0.0)}),
    }
    for name, table in raw.items():
        models[name] = _model(name, table)
    return models


def _model(name: str, table: Any) -> ModelConfig:
    where = f"models.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    provider = table.get("provider")
    if not isinstance(provider, str) or not provider:
        raise ConfigError(f"{where}.provider: required (e.g. 'openai', 'anthropic', 'local', 'echo')")
    for key in ("model", "base_url", "api_key_env"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{where}.{key}: must be a string")
    fallbacks = table.get("fallbacks", [])
    if not isinstance(fallbacks, list) or not all(isinstance(x, str) for x in fallbacks):
        raise ConfigError(f"{where}.fallbacks: must be a list of model names")
    cap = table.get("max_tokens_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"{where}.max_tokens_cap: must be a positive integer")
    options = {k: v for k, v in table.items() if k not in MODEL_KEYS and k != "options"}
    nested = table.get("options", {})
    if not isinstance(nested, dict):
        raise ConfigError(f"{where}.options: must be a table of provider options")
    clash = sorted(nested.keys() & options.keys())
    if clash:
        raise ConfigError(f"{where}.{clash[0]}: set both in the model table and in its options table")
    options.update(nested)
    return ModelConfig(
        name=name,
        provider=provider,
        model=table.get("model"),
        base_url=table.get("base_url"),
        api_key_env=table.get("api_key_env"),
        fallbacks=tuple(fallbacks),
        max_tokens_cap=cap,
        options=options,
    )


def _check_models(settings: Settings) -> None:
    for name, model in settings.models.items():
        for fallback in model.fallbacks:
            if fallback not in settings.models:
                raise ConfigError(f"models.{name}.fallbacks: unknown model {fallback!r}")
    if settings.default_model not in settings.models:
        raise ConfigError(f"default_model: unknown model {settings.default_model!r}")
