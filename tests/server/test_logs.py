"""The redacting log filter: secrets out of messages, arguments, tracebacks and extras."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from sluiceway.providers.base import ModelConfig
from sluiceway.server.logs import REDACTED, RedactingFilter, install_redaction, redact, upstream_secrets
from tests.live import make_settings

SECRET = "upstream-secret-0123456789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [redacted]"),
        ("{'authorization': 'Bearer abc'}", "{'authorization': 'Bearer [redacted]'}"),
        ('{"x-api-key": "k-123456"}', '{"x-api-key": "[redacted]"}'),
        ("GET /v1/models?api_key=abc123&x=1 HTTP/1.1", "GET /v1/models?api_key=[redacted]&x=1 HTTP/1.1"),
        ("GET /ws?token=abc HTTP/1.1", "GET /ws?token=[redacted] HTTP/1.1"),
        ("Incorrect API key provided: sk-proj-AbC123xyz.", "Incorrect API key provided: [redacted]."),
        (
            "Sec-WebSocket-Protocol: sluiceway, sluiceway.key.abcdef",
            "Sec-WebSocket-Protocol: sluiceway, sluiceway.key.[redacted]",
        ),
        (f"failed with {SECRET} inside", "failed with [redacted] inside"),
        ("max_tokens=5 tokens_per_day=9 monkey=1", "max_tokens=5 tokens_per_day=9 monkey=1"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text, [SECRET]) == expected
    assert redact(expected, [SECRET]) == expected  # redacting twice changes nothing


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s %(request)s"))
    handler.addFilter(RedactingFilter([SECRET]))
    logger = logging.getLogger("sluiceway.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_messages_arguments_and_extras_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.warning(
        "calling %s with %r", "upstream", {"key": SECRET}, extra={"request": {"path": f"/{SECRET}"}}
    )
    line = out.getvalue()
    assert SECRET not in line and line.count(REDACTED) == 2


def test_positional_arguments_keep_their_types(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured  # uvicorn's access formatter unpacks exactly these five arguments
    logger.warning(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/?key=abc", "1.1", 200, extra={"request": ""}
    )
    assert out.getvalue().startswith('127.0.0.1:5 - "GET /?key=[redacted] HTTP/1.1" 200')


def test_tracebacks_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    try:
        raise RuntimeError(f"upstream said: bad key {SECRET}")
    except RuntimeError:
        logger.exception("provider failed", extra={"request": ""})
    text = out.getvalue()
    assert "Traceback" in text and "RuntimeError: upstream said: bad key [redacted]" in text
    assert SECRET not in text


def test_install_puts_one_filter_on_each_handler() -> None:
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("sluiceway.test_logs.install")
    logger.addHandler(handler)
    try:
        install_redaction([SECRET], loggers=[logger.name])
        install_redaction([SECRET], loggers=[logger.name])
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


def test_upstream_secrets_come_from_the_models_key_variables() -> None:
    settings = make_settings(models={"up": ModelConfig("up", "openai", api_key_env="UP_KEY")})
    env = {"UP_KEY": SECRET, "OTHER": "not-a-secret-of-ours", "SLUICEWAY_API_KEYS": "client-key-0123456789,x"}
    assert upstream_secrets(settings, env) == [SECRET, "client-key-0123456789"]


def test_a_placeholder_after_a_credential_word_is_kept(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured  # "token: %s" once lost its %s: the line failed and logging printed the cause raw
    logger.warning("%s failed before its first token: %s", "boom", "upstream_error", extra={"request": ""})
    assert out.getvalue() == "boom failed before its first token: upstream_error \n"


def test_a_message_that_does_not_fit_its_arguments_is_written_redacted(
    captured: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    logger, out = captured
    logger.warning("only %s", "one", SECRET, extra={"request": ""})
    assert out.getvalue() == "only %s ('one', '[redacted]') \n"
    assert "Logging error" not in capsys.readouterr().err
