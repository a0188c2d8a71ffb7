"""Upstream failures into the error tree: statuses, retry hints, and no key left in a message."""

from __future__ import annotations

import pytest

from sluiceway.errors import RateLimitedError, UpstreamAuthError, UpstreamError
from sluiceway.providers._sdk_errors import from_status, from_stream_error

KEY = "gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd"  # not shaped like sk-: only the exact value is known


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, UpstreamError, False),
        (404, UpstreamError, False),
        (422, UpstreamError, False),
        (408, UpstreamError, True),
        (409, UpstreamError, True),
        (429, RateLimitedError, True),
        (401, UpstreamAuthError, False),
        (500, UpstreamError, True),
        (503, UpstreamError, True),
    ],
)
def test_statuses_map_to_the_tree_and_a_refusal_is_not_retryable(
    status: int, kind: type, retryable: bool
) -> None:
    error = from_status(status, {}, {"error": {"message": "no"}}, model="m", secret=KEY)
    assert type(error) is kind and error.to_event().retryable is retryable


@pytest.mark.parametrize("padding", [250, 270, 290, 299, 300, 320])
def test_a_key_that_straddles_the_length_limit_leaves_no_part_behind(padding: int) -> None:
    body = {"error": {"message": "x" * padding + " " + KEY + " and more"}}
    for error in (
        from_status(500, {}, body, model="m", secret=KEY),
        from_stream_error(body, model="m", secret=KEY),
    ):
        assert KEY[:6] not in error.message  # "gsk_AB": not even the start of it
    assert len(from_status(500, {}, body, model="m", secret=KEY).message) < 400


def test_a_vendor_shaped_key_is_removed_before_the_cut() -> None:
    body = {"error": {"message": "x" * 291 + " sk-proj-AbCdEf123456"}}
    error = from_status(401, {}, body, model="m", secret=None)
    assert "sk-" not in error.message
