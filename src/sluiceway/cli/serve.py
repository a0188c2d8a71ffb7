"""``sluiceway serve``: run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sluiceway.server.settings import ConfigError, Settings, load_settings


def add_parser(sub: Any) -> None:
    """Register ``serve`` and its flags."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the streaming server",
        description="Run the sluiceway server. Settings come from --config (default ./sluiceway.toml "
        "if present), SLUICEWAY_* environment variables and these flags, flags winning.",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    p.add_argument("--config", help="TOML config file (default ./sluiceway.toml if present)")
    p.add_argument("--model", dest="default_model", help="default model for requests naming none")
    p.add_argument("--model-path", help="GGUF file for the 'local' model (default: SmolLM2-135M)")
    p.add_argument("--echo-delay-ms", type=float, help="delay per token of the 'echo' model")
    p.add_argument(
        "--disconnect-policy",
        choices=["cancel", "finish"],
        help="when the last reader leaves: cancel after the grace period (default) or finish",
    )
    p.add_argument("--disconnect-grace-s", type=float, help="grace before cancelling (default 5)")
    p.add_argument("--heartbeat-s", type=float, help="seconds between keep-alive pings (default 15)")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format (default text)")
    p.set_defaults(run=run)


OVERRIDES = (
    "host",
    "port",
    "default_model",
    "model_path",
    "echo_delay_ms",
    "disconnect_policy",
    "disconnect_grace_s",
    "heartbeat_s",
    "log_format",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings for the parsed flags (raises :class:`ConfigError`)."""
    overrides = {key: getattr(args, key, None) for key in OVERRIDES}
    return load_settings(args.config, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    """Load settings and models, print where we listen, serve until stopped."""
    import uvicorn

    from sluiceway.server.app import create_app
    from sluiceway.server.models import ModelSet

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"sluiceway: configuration error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    models: ModelSet = app.state.models
    print(f"sluiceway: loading models ({', '.join(settings.model_names())}) ...", flush=True)
    models.load()
    for name, why in models.unavailable.items():
        print(f"sluiceway: model {name} unavailable: {why}", flush=True)
    ready = ", ".join(sorted(models.providers))
    print(f"sluiceway: ready models: {ready} (default: {models.default})", flush=True)
    print(f"sluiceway: listening on http://{settings.host}:{settings.port}", flush=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")
    uvicorn.Server(config).run()
    return 0
