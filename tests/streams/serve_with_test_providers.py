"""``python -m tests.streams.serve_with_test_providers serve ...``: ``sluiceway serve`` with the test-only
providers (``counting``, ``scripted``, ``flood``) registered, for tests that need a server process."""

from __future__ import annotations

import sys

import uvicorn

from sluiceway.cli.main import build_parser
from sluiceway.cli.serve import draining_server, settings_from_args
from sluiceway.server.app import create_app
from sluiceway.streams.shutdown import ShutdownSignal
from tests.streams.providers import registry_with


def main() -> int:
    args = build_parser().parse_args(sys.argv[1:])
    settings = settings_from_args(args)
    shutdown = ShutdownSignal()
    app = create_app(settings, registry_with(), shutdown=shutdown)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    draining_server(config, shutdown).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
