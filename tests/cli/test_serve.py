"""``sluiceway serve``'s own process settings (the server itself is tested under tests/server)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sluiceway.cli import serve


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
