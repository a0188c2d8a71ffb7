"""A real uvicorn server on a free loopback port, in a thread, for tests of streaming behaviour."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from sluiceway.server.app import create_app
from sluiceway.server.settings import Settings, load_settings
from sluiceway.server.state import AppState

_TEST_DATA_DIR = tempfile.TemporaryDirectory(prefix="sluiceway-tests-")  # removed when the run ends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A running server: its URL, app and (once started) shared state."""

    url: str
    app: FastAPI
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.sluiceway
        return state

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (for inspecting state)."""
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: echo as the default model, no config file from the cwd, conversations in a
    temporary directory of this test run (never the user's data dir) unless ``data_dir`` is given."""
    overrides.setdefault("default_model", "echo")
    overrides.setdefault("data_dir", _TEST_DATA_DIR.name)
    models = overrides.pop("models", None)
    settings = load_settings(None, env={}, overrides=overrides)
    if models:
        from dataclasses import replace

        settings = replace(settings, models={**settings.models, **models})
    return settings


@contextmanager
def live_server(settings: Settings | None = None, app: FastAPI | None = None) -> Iterator[LiveServer]:
    """Serve ``app`` (or ``create_app(settings)``) under real uvicorn until the block ends."""
    app = app or create_app(settings or make_settings())
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    live = LiveServer(f"http://127.0.0.1:{port}", app, server)

    def run() -> None:
        loop = asyncio.new_event_loop()
        live.loop = loop
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(15)
