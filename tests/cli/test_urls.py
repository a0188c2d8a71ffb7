"""The URL check shared by ``chat``, ``bench`` and ``doctor``."""

from __future__ import annotations

import pytest

from sluiceway.cli.urls import url_problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8000", None),
        ("https://chat.example.com/base/", None),
        ("http://[::1]:8000", None),
        ("127.0.0.1:8000", "must start with http:// or https://"),
        ("ftp://127.0.0.1", "must start with http:// or https://"),
        ("http://127.0.0.1:abc", "invalid URL 'http://127.0.0.1:abc': Invalid port: 'abc'"),
        ("http://[::1", "invalid URL 'http://[::1'"),
        ("http://256.1.1.1", "invalid URL 'http://256.1.1.1': Invalid IPv4 address"),
        ("http://127.0.0.1:99999", "port 99999 is out of range"),
        ("http://", "no host"),
    ],
)
def test_url_problem(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert found == problem if problem is None else (found is not None and problem in found)
