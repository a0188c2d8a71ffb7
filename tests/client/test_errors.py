"""Mapping a server's refusals to exception classes: sluiceway's body, other bodies, Retry-After."""

from __future__ import annotations

import email.utils
import time

import pytest

from sluiceway.client import ConnectionFailedError, StreamProtocolError
from sluiceway.client._errors import error_from_payload, error_from_response, parse_retry_after
from sluiceway.errors import (
    InternalError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    SluicewayError,
    UnknownModelError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, b'{"error":{"code":"invalid_request","message":"x"}}', InvalidRequestError, "invalid_request"),
        (404, b'{"error":{"code":"unknown_model","message":"no"}}', UnknownModelError, "unknown_model"),
        (429, b'{"error":{"code":"overloaded","message":"busy"}}', OverloadedError, "overloaded"),
        (502, b'{"error":{"code":"upstream_error","message":"x"}}', UpstreamError, "upstream_error"),
        (418, b'{"error":{"code":"teapot","message":"short and stout"}}', SluicewayError, "teapot"),
        (502, b"<html><body>Bad Gateway</body></html>", UpstreamError, "upstream_error"),
        (503, b"", UpstreamUnavailableError, "upstream_unavailable"),
        (504, b"gateway timeout", UpstreamTimeoutError, "upstream_timeout"),
        (500, b"oops", InternalError, "internal"),
        (405, b'{"detail":"Method Not Allowed"}', InvalidRequestError, "invalid_request"),
        (400, b'{"error":{"message":"openai shape","type":"x"}}', InvalidRequestError, None),
    ],
)
def test_status_and_body_pick_the_class(
    status: int, body: bytes, cls: type[SluicewayError], code: str | None
) -> None:
    error = error_from_response(status, {}, body)
    assert type(error) is cls
    assert error.code == (code or cls.code)


def test_a_foreign_body_keeps_its_message() -> None:
    error = error_from_response(400, {}, b'{"error":{"message":"openai shape","type":"x"}}')
    assert "openai shape" in error.message and "HTTP 400" in error.message


def test_rate_limited_takes_retry_after_from_the_body_first() -> None:
    body = b'{"error":{"code":"rate_limited","message":"slow down","retry_after":7}}'
    error = error_from_response(429, {"retry-after": "3"}, body)
    assert isinstance(error, RateLimitedError) and error.retry_after == 7.0


def test_rate_limited_falls_back_to_the_retry_after_header() -> None:
    error = error_from_response(429, {"retry-after": "3"}, b'{"error":{"code":"rate_limited","message":"x"}}')
    assert isinstance(error, RateLimitedError) and error.retry_after == 3.0


def test_retry_after_as_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert parse_retry_after(when) == pytest.approx(30, abs=2)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_in_band_error_payload() -> None:
    error = error_from_payload({"type": "error", "code": "upstream_timeout", "message": "slow"})
    assert isinstance(error, UpstreamTimeoutError) and error.message == "slow"


def test_client_errors_sit_in_the_tree() -> None:
    assert issubclass(ConnectionFailedError, SluicewayError) and ConnectionFailedError.retryable
    assert issubclass(StreamProtocolError, SluicewayError)
    assert ConnectionFailedError("x").code == "connection_failed"
