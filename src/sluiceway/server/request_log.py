"""One log line per HTTP request, as text or as JSON (``--log-format text|json``).

How it works: :class:`RequestLogMiddleware`, the outermost ASGI layer, gives every request an id
(the client's ``X-Request-Id`` when it is a short token, else a new one) and returns it as
``X-Request-Id``. It notes the status and the ``X-Stream-Id`` of the response start and passes every
other message through untouched. When the response is over (sent, failed or abandoned by the client;
for a streamed body, once it has streamed above the layers: see :mod:`sluiceway.server.responses`)
it looks the stream up in the hub and logs one record on the ``sluiceway.requests`` logger: request
id, method, path, status, stream id, model, protocol, time to first token, output tokens, duration
and outcome. The fields ride on the record as ``record.request``; :class:`JsonFormatter` puts them
at the top level of the JSON object, the text formatter appends them as ``key=value``.

Outcomes: the finish reason of the stream (``stop``, ``length``, ``cancelled``) or its error code;
``disconnected`` when the client left before the stream ended; ``ok`` / ``rejected`` (status >= 400)
for requests that started no stream.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.server.metrics import StreamMetrics
from sluiceway.server.responses import CLIENT_LEFT, DEFERRED, Deferred

logger = logging.getLogger("sluiceway.requests")
REQUEST_ID = "X-Request-Id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")
"""HTTP client loggers held at WARNING by :func:`configure_logging` (they log every request at INFO)."""


class RequestLogMiddleware:
    """Logs one record per HTTP request when its response is over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(Headers(scope=scope).get(REQUEST_ID.lower(), ""))
        seen: dict[str, Any] = {"status": 500, "stream_id": None}

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID] = request_id
                seen["status"] = message["status"]
                seen["stream_id"] = headers.get("x-stream-id")
            await send(message)

        log = partial(_log_request, scope, request_id, seen, started)
        try:
            await self.app(scope, receive, send_noting)
        finally:
            deferred: Deferred | None = scope.get(DEFERRED)
            if deferred is not None and deferred.response is not None:
                deferred.after.append(log)  # the body streams once every layer has returned
            else:
                log()


def _log_request(scope: Scope, request_id: str, seen: dict[str, Any], started: float) -> None:
    if seen["stream_id"] is None and scope.get(CLIENT_LEFT):  # no start was sent: nobody to send it to
        seen["status"], seen["stream_id"] = 499, scope[CLIENT_LEFT]
    fields = request_fields(scope, request_id, seen["status"], seen["stream_id"], started)
    logger.info(summary(fields), extra={"request": fields})


def _request_id(offered: str) -> str:
    return offered if _VALID_ID.fullmatch(offered) else secrets.token_hex(8)


def request_fields(
    scope: Scope, request_id: str, status: int, stream_id: str | None, started: float
) -> dict[str, Any]:
    """The fields of one request's line (the stream's, when it started one)."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": scope.get("method", ""),
        "path": scope.get("path", ""),
        "status": status,
        "stream_id": stream_id,
        "model": None,
        "protocol": None,
        "ttft_ms": None,
        "tokens": None,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "outcome": "ok" if status < 400 else "rejected",
    }
    stream = _stream(scope, stream_id)
    if stream is None:
        return fields
    meter = stream.meter
    observer = meter.observer
    fields["model"] = meter.model or stream.model
    fields["tokens"] = meter.usage_so_far().output_tokens
    if meter.first_token is not None:
        fields["ttft_ms"] = round((meter.first_token - meter.started) * 1000, 2)
    if isinstance(observer, StreamMetrics):
        fields["protocol"] = observer.protocol
        fields["outcome"] = observer.outcome or "disconnected"
    elif not stream.finished:
        fields["outcome"] = "disconnected"
    return fields


def _stream(scope: Scope, stream_id: str | None) -> Any:
    app = scope.get("app")
    state = getattr(getattr(app, "state", None), "sluiceway", None)
    if stream_id is None or state is None:
        return None
    return state.hub.get(stream_id)


def summary(fields: dict[str, Any]) -> str:
    """The text form: ``METHOD path status`` then the known fields as ``key=value``. The path is
    the client's (decoded): its control characters are written escaped (``\\x0a``), so that no
    request can start a line of its own in the log."""
    path = _CONTROL.sub(_escape, fields["path"])
    head = f"{fields['method']} {path} {fields['status']}"
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in _IN_HEAD)
    return f"{head} {rest}"


_IN_HEAD = frozenset({"method", "path", "status"})
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's (or a generation's)
    fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request", "generation"):  # a request's line, or a generation's end (streams/hub.py)
            fields = getattr(record, name, None)
            if isinstance(fields, dict):
                line.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: str, level: int = logging.INFO, *, force: bool = False) -> None:
    """Send every log record to stderr, one line each, as text or JSON.

    Like ``logging.basicConfig``, this does nothing when the root logger already has handlers (a host
    program, or pytest, configured logging) unless ``force`` replaces them.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:  # a line per upstream request, repeating the request log, on the hot path
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def uvicorn_log_options(log_format: str) -> dict[str, Any]:
    """uvicorn settings to go with :func:`configure_logging`: no access log (the request log replaces
    it); in JSON mode uvicorn's own loggers go through the root handler too."""
    options: dict[str, Any] = {"access_log": False}
    if log_format == "json":
        options["log_config"] = None
    return options
