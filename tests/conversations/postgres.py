"""A real, throw-away PostgreSQL server for tests: initdb into a temp dir, run on a free loopback port.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the ``postgres`` user
(``runuser``, else ``su``) in a temp dir handed over to it. Missing binaries skip the tests, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest

from tests.live import free_port

_names = count(1)


@dataclass
class PostgresServer:
    """A running server: where its binaries are and the port it listens on (127.0.0.1, trust auth)."""

    bindir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL (as a user would give ``--database-url``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"sluiceway_test_{os.getpid()}_{next(_names)}"
        subprocess.run(
            [
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-T",
                "template0",
                name,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.url(name)


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def missing(why: str) -> None:
    """Skip, or fail under CI=true, because PostgreSQL cannot run here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL needed under CI: {why}")
    pytest.skip(f"PostgreSQL not available: {why}")


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server for the block; stop it and remove its files afterwards."""
    bindir = find_bindir()
    if bindir is None:
        missing("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="sluiceway-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            missing("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()

    def run(*argv: str) -> None:
        result = subprocess.run(_as_server_user(list(argv)), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}{log}")

    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c full_page_writes=off"
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "-N")
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        try:
            yield PostgresServer(bindir, port)
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def database_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For a fixture parametrized by backend: a new SQLite file's URL, or a new PostgreSQL database's."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conversations.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()
