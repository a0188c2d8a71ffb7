"""``sluiceway serve``'s own process settings (the server itself is tested under tests/server)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluiceway.cli.serve import GC_THRESHOLD, settle_gc


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
    settle_gc()
    assert gc.get_freeze_count() >= len(kept)  # what lived at start-up is out of the collector's walks
    assert gc.get_threshold() == GC_THRESHOLD
    assert GC_THRESHOLD[0] > 700
    garbage = []
    garbage.append(garbage)  # a cycle made after start-up is still collected
    del garbage
    assert gc.collect() >= 1
