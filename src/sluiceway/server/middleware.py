"""The ASGI layers every request passes before a route: headers, CORS, keys, body size.

From the outside in::

    SecurityHeadersMiddleware   nosniff and Referrer-Policy on everything, a strict CSP on the page
    CORSMiddleware              only when ``cors_origins`` is configured (Starlette's own)
    AuthMiddleware              API keys; browsers' Origin (and, keyless on loopback, Host) checked
    BodyLimitMiddleware         413 for a body over ``max_body_bytes``, without reading the rest
    (routes)

How the body limit avoids reading: a ``Content-Length`` over the limit is refused before the route
runs, so no body byte is read at all. A chunked body is counted as the route reads it; the moment it
passes the limit the 413 goes out with ``Connection: close`` (so the server drops the connection
instead of draining the upload), the route is told the client disconnected, and anything the route
sends afterwards is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.errors import RequestTooLargeError
from sluiceway.server.auth import AuthMiddleware, KeyRing, is_loopback
from sluiceway.server.errors import error_response
from sluiceway.server.settings import Settings

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
ALWAYS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}
_ALWAYS_AND_PAGE = {**ALWAYS, **PAGE}
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
"""FastAPI's API docs pull their scripts from a CDN and run an inline one: no page CSP there."""
CORS_HEADERS = ("authorization", "content-type", "x-api-key", "anthropic-version", "last-event-id")
EXPOSED_HEADERS = ("retry-after", "x-stream-id", "x-vercel-ai-ui-message-stream")


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response (the page's CSP everywhere but the docs)."""

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str] = DOCS_PATHS) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = ALWAYS if scope["path"] in self.docs_paths else _ALWAYS_AND_PAGE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Answers 413, in the route's error shape, to request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, *_CountingBody(self, scope, receive, send).channels())

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(f"request body is larger than the limit of {self.max_bytes} bytes")
        response = error_response(error.to_event(), Request(scope), 413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class _CountingBody:
    """One request's body counter, between the server and the route."""

    def __init__(self, limit: BodyLimitMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit = limit
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received = 0
        self.started = False
        self.refused = False

    def channels(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes:
                self.refused = True
                if not self.started:
                    await self.limit._refuse(self.scope, self._receive, self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the layers above to ``app`` for ``settings`` (call once, in the app factory)."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    local_only = not settings.api_keys and not settings.insecure_no_auth and is_loopback(settings.host)
    app.add_middleware(
        AuthMiddleware,
        keys=KeyRing(settings.api_keys),
        origins=settings.cors_origins,
        local_only=local_only,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=list(CORS_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
