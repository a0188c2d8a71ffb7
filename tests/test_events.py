"""The event model's helpers."""

from __future__ import annotations

import pytest

from sluiceway.events import repaired_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain", "plain"), ("é 😀", "é 😀"), ("a \ud83d b", "a \ufffd b"), ("\ude00\ud800", "\ufffd\ufffd")],
)
def test_repaired_text_replaces_only_lone_surrogates(text: str, expected: str) -> None:
    assert repaired_text(text) == expected
    assert repaired_text(text).encode("utf-8")  # writable now
