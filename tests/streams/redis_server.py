"""A real, throw-away ``redis-server`` for tests: a free loopback port, a temp dir, no persistence.

A missing binary skips the tests that need it, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis

from tests.live import free_port


@dataclass
class RedisServer:
    """A running server on 127.0.0.1."""

    port: int

    @property
    def url(self) -> str:
        """The ``redis://`` URL (what ``--redis-url`` takes)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client, for inspecting keys from a test."""
        return redis.Redis(host="127.0.0.1", port=self.port)


def missing(why: str) -> None:
    """Skip, or fail under CI=true, because Redis cannot run here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"redis-server needed under CI: {why}")
    pytest.skip(f"redis-server not available: {why}")


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start ``redis-server`` for the block; stop it and remove its directory afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("no redis-server on PATH (apt-get install redis-server)")
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="sluiceway-redis-") as tmp:
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", ""]
        argv += ["--appendonly", "no", "--logfile", os.path.join(tmp, "redis.log")]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(port)
        try:
            _wait_ready(server, proc)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait_ready(server: RedisServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    client = server.client()
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit code {proc.poll()})")
            time.sleep(0.02)
    finally:
        client.close()
