"""What a started server has loaded: only the features in use (each import costs resident memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter (this one has imported everything already): serve, stream an answer
# without a conversation, note the modules loaded, then use a conversation and note them again.
SCRIPT = """
import json, sys, urllib.request
from dataclasses import replace

import sluiceway.cli.main  # what `sluiceway serve` loads before the app
from tests.live import live_server, make_settings

HEAVY = ("sqlalchemy", "aiosqlite", "httpx", "rich", "anthropic")


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


settings = make_settings(data_dir=sys.argv[1])
settings = replace(settings, models={k: v for k, v in settings.models.items() if k != "local"})
seen = {}
with live_server(settings) as srv:
    seen["stream"] = post(srv.url + "/chat/stream", {"message": "a b c"})
    seen["loaded"] = sorted(m for m in HEAVY if m in sys.modules)
    seen["conversation"] = post(srv.url + "/chat/stream", {"message": "kept", "conversation_id": "new"})
    seen["then"] = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps(seen))
"""


def test_a_started_server_loads_no_database_code_until_a_conversation_needs_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["stream"][0] == 200 and seen["stream"][1].endswith("data: [DONE]\n\n")
    assert seen["loaded"] == []
    assert seen["conversation"][0] == 200 and "kept" in seen["conversation"][1]
    assert {"sqlalchemy", "aiosqlite"} <= set(seen["then"])
    assert (tmp_path / "sluiceway.db").is_file()


def test_the_streaming_posts_skip_fastapis_router_and_stay_documented(tmp_path: Path) -> None:
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from sluiceway.server.app import create_app
    from tests.live import make_settings

    app = create_app(make_settings(data_dir=str(tmp_path)))
    direct = ["/v1/chat/completions", "/v1/messages", "/api/chat"]
    routes = app.router.routes
    first_api = next(i for i, r in enumerate(routes) if isinstance(r, APIRoute) or not isinstance(r, Route))
    ahead = [r for r in routes[:first_api] if isinstance(r, Route) and r.methods == {"POST"}]
    assert [r.path for r in ahead] == direct  # tried before FastAPI's routes and included routers
    paths = app.openapi()["paths"]
    assert all("post" in paths[path] for path in direct)  # the OpenAPI document still has them
