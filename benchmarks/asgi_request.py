"""CPU per streaming request inside the app, without sockets: the ASGI app called directly.

``POST /v1/chat/completions`` (``stream: true``, one token from ``echo``) through every middleware,
the route, the stream hub and the response, measured with ``time.process_time`` over ``--requests``
requests, against the same app with the route dispatched by FastAPI's router (the direct routes of
:func:`sluiceway.server.routes._protocol.route_directly` removed), the two taking turns for
``--rounds`` rounds. In-process (uvloop), no I/O.

Run: ``.venv/bin/python benchmarks/asgi_request.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

import orjson
import uvloop
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from sluiceway.server.app import create_app
from sluiceway.server.settings import load_settings

BODY = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True})
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 5555),
    "server": ("127.0.0.1", 8000),
}


async def one(app: FastAPI) -> None:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)  # the client never leaves; the response cancels this wait
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({**SCOPE, "state": {}}, receive, send)
    assert sent[-2]["body"].endswith(b"data: [DONE]\n\n"), sent[-2:]


async def measure(apps: dict[str, FastAPI], requests: int, rounds: int) -> dict[str, list[float]]:
    """CPU µs per request for each app, the apps taking turns round after round (so that the
    machine's changing load hits them alike)."""
    runs: dict[str, list[float]] = {label: [] for label in apps}
    async with AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
            for _ in range(300):  # warm up
                await one(app)
        gc.collect()
        for _ in range(rounds):
            for label, app in apps.items():
                started = time.process_time()
                for _ in range(requests):
                    await one(app)
                runs[label].append((time.process_time() - started) / requests * 1e6)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per round and app")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        toml = f"{tmp}/sluiceway.toml"
        with open(toml, "w") as f:
            f.write(f'default_model = "echo"\ndata_dir = "{tmp}"\n[models.echo]\nprovider = "echo"\n')
        settings = load_settings(toml, env={})
        direct, routed = create_app(settings), create_app(settings)
        routed.router.routes[:] = [
            r
            for r in routed.router.routes
            if isinstance(r, APIRoute) or not isinstance(r, Route) or "POST" not in (r.methods or ())
        ]
        apps = {"direct dispatch": direct, "FastAPI's router": routed}
        runs = uvloop.run(measure(apps, args.requests, args.rounds))
    for label, values in runs.items():
        quartiles = statistics.quantiles(values, n=4)
        print(
            f"{label}: {statistics.median(values):.0f} µs CPU per request "
            f"(quartiles {quartiles[0]:.0f}-{quartiles[2]:.0f}, {len(values)} rounds of {args.requests})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
