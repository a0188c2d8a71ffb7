from __future__ import annotations

import pytest

from sluiceway import errors
from sluiceway.errors import ERROR_CLASSES, SluicewayError, error_from_code

CODES = {
    "invalid_request": 400,
    "unknown_model": 404,
    "rate_limited": 429,
    "upstream_auth": 502,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "upstream_error": 502,
    "overloaded": 429,
    "cancelled": 499,
    "internal": 500,
}


def test_every_stable_code_has_a_class_and_status() -> None:
    assert {code: cls.status for code, cls in ERROR_CLASSES.items() if code in CODES} == CODES


@pytest.mark.parametrize("code", sorted(CODES))
def test_error_from_code_roundtrip(code: str) -> None:
    err = error_from_code(code, "msg", 1.5)
    assert isinstance(err, SluicewayError)
    assert err.code == code and err.message == "msg" and err.retry_after == 1.5
    event = err.to_event()
    assert (event.code, event.message, event.retry_after) == (code, "msg", 1.5)


def test_unknown_code_keeps_code() -> None:
    err = error_from_code("some_new_code", "bye")
    assert type(err) is SluicewayError and err.code == "some_new_code"


def test_retryable_flags() -> None:
    assert errors.RateLimitedError("x").to_event().retryable
    assert not errors.InvalidRequestError("x").to_event().retryable
