"""Servers in processes of their own, for what a thread cannot show: signals, RSS, several instances.

:func:`serve_process` runs the real command line (``python -m sluiceway serve ...``); with
``test_providers=True`` it runs :mod:`tests.streams.serve_with_test_providers` instead, the same
server with the test-only providers registered. Each server gets a free loopback port, a temp data
dir and a config file whose ``local`` model is ``echo`` (no GGUF is loaded), and is stopped with
SIGTERM (then SIGKILL) when the block ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
default_model = "echo"
[models.local]
provider = "echo"
[models.slow]
provider = "echo"
delay_ms = 50
"""
FLOOD = """[models.flood]
provider = "flood"
count = {flood_count}
size = {flood_size}
"""
"""The test-only ``flood`` model: only a server with the test providers knows its provider."""


@dataclass
class ServerProcess:
    """A server running in a child process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kib(self) -> int:
        """The process's resident set size now, in KiB (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        """Send SIGTERM (what a process manager does to stop it)."""
        self.proc.send_signal(signal.SIGTERM)

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace")


@contextmanager
def serve_process(
    *args: str,
    test_providers: bool = False,
    flood_count: int = 1000,
    flood_size: int = 1024,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run a server with ``args`` added to its command line until the block ends."""
    with tempfile.TemporaryDirectory(prefix="sluiceway-proc-") as tmp:
        config = Path(tmp, "sluiceway.toml")
        flood = FLOOD.format(flood_count=flood_count, flood_size=flood_size) if test_providers else ""
        config.write_text(CONFIG + flood)
        port = free_port()
        module = "tests.streams.serve_with_test_providers" if test_providers else "sluiceway"
        argv = [sys.executable, "-m", module, "serve", "--port", str(port), "--config", str(config)]
        argv += ["--data-dir", tmp, *args]
        log = Path(tmp, "server.log")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
        try:
            _wait_healthy(server)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _wait_healthy(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{server.output()}")
        time.sleep(0.05)
