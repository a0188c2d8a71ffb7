"""The typed provider options every kind's check is built from."""

from __future__ import annotations

import pytest

from sluiceway.providers.base import Option, OptionKind


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("number", [0, 2, 0.5], [-1, True, "1", float("nan"), float("inf"), None]),
        ("positive", [0.1, 3], [0, -1, False, "2"]),
        ("count", [0, 7], [-1, 1.0, True, "3"]),
        ("string", ["", "x"], [1, None, b"x"]),
        ("boolean", [True, False], [0, 1, "true"]),
    ],
)
def test_option_kinds(kind: OptionKind, good: list[object], bad: list[object]) -> None:
    option = Option(kind)
    assert [option.problem(value) for value in good] == [None] * len(good)
    assert all(option.problem(value) for value in bad)
