"""Keeping secrets out of log lines: a logging filter that redacts keys before any handler writes.

What is redacted: the values of the upstream keys this server holds (the variables named by each
model's ``api_key_env``, and ``SLUICEWAY_API_KEYS``), anything shaped like a vendor key
(``sk-...``), ``Bearer`` tokens, WebSocket key subprotocols (``sluiceway.key.<key>``), and the
values of ``Authorization``/``x-api-key`` headers and of ``key``/``token``-like query parameters,
wherever they appear in a message, its arguments, an exception's traceback or the fields a record
carries as extras (such as the request log's).

How: :class:`RedactingFilter` rewrites each record in place (message arguments one by one, so
formatters that read ``record.args`` such as uvicorn's access log keep working; the traceback is
formatted once and stored redacted in ``exc_text``). :func:`install_redaction` puts it on every
handler of the root logger and of uvicorn's loggers; ``sluiceway serve`` calls it once logging is
configured.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from sluiceway.server.settings import Settings

REDACTED = "[redacted]"
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
MIN_SECRET_LENGTH = 8
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
_PATTERNS = (
    re.compile(
        r"(?i)(\b(?:authorization|x-api-key|api[-_]?key|access[-_]?token|auth[-_]?token|token|key)\b"
        r"[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)(?!bearer\s)[^\s\"',;&)}\[\]]+"
    ),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"()\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(\bsluiceway\.key\.)[^\s,;\"'\[\]]+"),
)


_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
"""A ``%``-format placeholder: a message with arguments is redacted between its placeholders, never
across one (``"first token: %s"`` must keep its ``%s``, else the arguments no longer fit)."""

_MAYBE = re.compile(r"(?i)key|token|authorization|bearer|sk-")
"""A word each of :data:`_PATTERNS` needs: text without one is left as it is (one search instead of
four substitutions; most of a request log line's fields are ids, paths and numbers)."""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each secret and anything shaped like a credential replaced by ``[redacted]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if _MAYBE.search(text) is None:
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def upstream_secrets(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values this server reads from its environment (upstream keys, its own keys)."""
    env = os.environ if env is None else env
    names = {m.api_key_env for m in settings.models.values() if m.api_key_env}
    values = [env.get(name, "") for name in names]
    values += env.get("SLUICEWAY_API_KEYS", "").split(",")
    return sorted({v.strip() for v in values if len(v.strip()) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """Rewrites every record so that no secret reaches a handler's output."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._template(record.msg) if record.args else redact(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for name in record.__dict__.keys() - _STANDARD:
            record.__dict__[name] = self._extra(record.__dict__[name])
        try:
            record.getMessage()
        except (TypeError, ValueError, KeyError):  # a message that does not fit its arguments
            record.msg, record.args = f"{record.msg} {record.args!r}", None  # both redacted above
        return True

    def _template(self, template: str) -> str:
        """A message template redacted piece by piece between its placeholders."""
        pieces = _PLACEHOLDER.split(template)
        if len(pieces) == 1:
            return redact(template, self.secrets)
        marks = _PLACEHOLDER.findall(template)
        out = [redact(pieces[0], self.secrets)]
        for mark, piece in zip(marks, pieces[1:], strict=True):
            out += (mark, redact(piece, self.secrets))
        return "".join(out)

    def _extra(self, value: object) -> object:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if isinstance(value, Mapping):
            return {k: self._extra(v) for k, v in value.items()}
        return value

    def _arg(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        text = str(value)
        redacted = redact(text, self.secrets)
        return value if redacted == text else redacted


def install_redaction(secrets: Iterable[str], loggers: Iterable[str] = LOGGERS) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on every handler of ``loggers`` (root and uvicorn's)."""
    redactor = RedactingFilter(secrets)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(redactor)
    return redactor
