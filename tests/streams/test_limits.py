from __future__ import annotations

import pytest

from sluiceway.errors import OverloadedError
from sluiceway.streams.limits import ConcurrencyLimits


def test_no_limit_by_default() -> None:
    limits = ConcurrencyLimits()
    for _ in range(1000):
        limits.acquire("m")
    assert limits.running == 1000


def test_the_server_limit_counts_every_model() -> None:
    limits = ConcurrencyLimits(max_total=2, retry_after_s=3)
    limits.acquire("a")
    limits.acquire("b")
    with pytest.raises(OverloadedError, match="max_concurrent") as refused:
        limits.acquire("c")
    assert refused.value.retry_after == 3 and refused.value.code == "overloaded"
    limits.release("a")
    limits.acquire("c")


def test_the_model_limit_counts_one_model() -> None:
    limits = ConcurrencyLimits(max_per_model=1)
    limits.acquire("a")
    limits.acquire("b")
    with pytest.raises(OverloadedError, match="'a'"):
        limits.acquire("a")
    limits.release("a")
    assert limits.running_for("a") == 0 and limits.running == 1
    limits.acquire("a")
