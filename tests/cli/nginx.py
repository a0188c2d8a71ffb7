"""A real nginx (the Debian package) in front of a test server, configured per test.

nginx runs in the foreground (``daemon off``) with ``master_process off``: one process, as the
current user (as root too, so it never switches to ``nobody``, who could not use the temp dirs),
with every path under the test's temp dir (``-p`` prefix, ``-e`` error log) on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live import free_port

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 128; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}
"""
LOCATION = """\
    location {path} {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{extra}
    }}
"""


def nginx_binary() -> str:
    """The nginx executable; skip (or under ``CI=true`` fail) when it is not installed."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (CI=true: scripts/services installs it)")
        pytest.skip("nginx is not installed")
    return found


@contextmanager
def nginx_proxy(
    upstream_port: int, workdir: Path, directives: list[str], paths: tuple[str, ...] = ("/",)
) -> Iterator[str]:
    """Serve ``paths`` through nginx to ``upstream_port`` with ``directives`` in each location."""
    binary = nginx_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = "\n".join(f"      {d};" for d in directives)
    locations = "".join(LOCATION.format(path=p, upstream=upstream_port, extra=extra) for p in paths)
    config = workdir / "nginx.conf"
    config.write_text(CONFIG.format(dir=workdir, port=port, locations=locations))
    log = workdir / "error.log"
    with (workdir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-e", str(log), "-p", str(workdir), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_listening(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {_read(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nginx did not listen on {port}: {_read(log)}")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
