"""API keys: who may call this server, recognised by a hash of the key they present.

How keys are kept: each configured key (plain, or already hashed as ``sha256:<hex>``) is held only as
its SHA-256 digest. A presented key is hashed and compared with *every* configured digest by
``hmac.compare_digest``, with no early exit, so the time taken says nothing about how close a guess
came. Unsalted SHA-256 is enough because keys must be long random strings (at least
:data:`MIN_KEY_LENGTH` characters): nobody can brute-force that space, unlike a password's.

Where a key is read: ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` on any HTTP route (the
OpenAI, seed and AI SDK clients send the first, Anthropic's SDK the second). A WebSocket sends it in
the handshake (the same headers, or the subprotocol ``sluiceway.key.<key>`` offered next to
``sluiceway``, for browsers that cannot set headers) or as its first message
``{"type": "auth", "key": "..."}``. Never in the URL: URLs end up in access logs.

How it is enforced: :class:`AuthMiddleware` (pure ASGI) answers 401 in the protocol's own error
shape before a route sees the request, leaving open only :data:`OPEN_PATHS` (health, the page and its
assets, the API docs). For WebSockets it also checks ``Origin``, and when the handshake carried no
key it reads the first message itself: an auth message is consumed, anything else closes the socket
with code 4401. The key found is kept in a context variable for the rest of the request, so
``start_stream`` applies that key's model list and quotas (:mod:`sluiceway.server.limits`) on every
protocol without each route passing it along.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.errors import AuthenticationError, PermissionDeniedError, SluicewayError
from sluiceway.server.errors import error_response, seed_shape

MIN_KEY_LENGTH = 16
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WS_PROTOCOL = "sluiceway"
WS_KEY_PREFIX = "sluiceway.key."
WS_UNAUTHORIZED = 4401
WS_FORBIDDEN = 4403
OPEN_PATHS = frozenset({"/", "/healthz", "/favicon.ico", "/sluiceway.js", "/openapi.json", "/docs", "/redoc"})
OPEN_PREFIXES = ("/static/", "/vendor/", "/docs/")
"""Health, the chat page and its files, and the API docs: everything else needs a key."""
MISSING = "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
INVALID = "invalid API key"
_KEY_FIELDS = frozenset({"key", "key_sha256", "name", "rpm", "max_concurrent", "tokens_per_day", "models"})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One client key: its digest (never the key itself), its name for logs, and its limits.

    ``None`` means unlimited; ``models`` ``None`` means every served model.
    """

    name: str
    digest: bytes = field(repr=False)
    rpm: int | None = None
    max_concurrent: int | None = None
    tokens_per_day: int | None = None
    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return self.models is None or model in self.models


def hash_key(key: str) -> bytes:
    """The SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys; :meth:`find` looks one up in constant time per key."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str | None) -> ApiKey | None:
        """The key whose digest matches ``presented``, comparing against every key."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def parse_api_keys(raw: object) -> tuple[ApiKey, ...]:
    """Keys from config or environment; raises ``ValueError`` naming the bad entry.

    ``raw`` is a comma-separated string (``SLUICEWAY_API_KEYS``), or a list whose items are key
    strings or tables with ``key`` or ``key_sha256`` and optional ``name``, ``rpm``,
    ``max_concurrent``, ``tokens_per_day``, ``models``. A string ``sha256:<hex>`` is a digest.
    """
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple):
        raise ValueError("must be a list of keys or [[api_keys]] tables")
    keys = tuple(_parse_key(item, i) for i, item in enumerate(raw))
    if len({k.digest for k in keys}) != len(keys):
        raise ValueError("the same key is configured twice")
    if len({k.name for k in keys}) != len(keys):
        raise ValueError("two keys have the same name")
    return keys


def _parse_key(item: object, index: int) -> ApiKey:
    where = f"api_keys[{index}]"
    if isinstance(item, ApiKey):
        return item
    if isinstance(item, str):
        item = {"key": item}
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be a key string or a table")
    unknown = set(item) - _KEY_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = item.get("name", f"key{index + 1}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: must be a non-empty string")
    return ApiKey(
        name=name,
        digest=_digest(item, where),
        rpm=_limit(item, "rpm", where),
        max_concurrent=_limit(item, "max_concurrent", where),
        tokens_per_day=_limit(item, "tokens_per_day", where),
        models=_models(item.get("models"), where),
    )


def _digest(item: Mapping[str, Any], where: str) -> bytes:
    key: object = item.get("key")
    hashed: object = item.get("key_sha256")
    if isinstance(key, str) and key.startswith("sha256:"):
        hashed = key.removeprefix("sha256:")
        key = None
    if (key is None) == (hashed is None):
        raise ValueError(f"{where}: give exactly one of 'key' or 'key_sha256'")
    if hashed is not None:
        try:
            digest = bytes.fromhex(hashed) if isinstance(hashed, str) else b""
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{where}.key_sha256: must be 64 hex digits (a SHA-256 digest)")
        return digest
    if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH or not key.isprintable() or " " in key:
        raise ValueError(
            f"{where}.key: must be at least {MIN_KEY_LENGTH} printable characters without spaces "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return hash_key(key)


def _limit(item: Mapping[str, Any], name: str, where: str) -> int | None:
    """A key's ``rpm``, ``max_concurrent`` or ``tokens_per_day``: a whole number of at least 1.

    As for the server's own integer settings (``settings._integer``, which this module cannot import:
    settings imports it), a boolean is not a number and a fraction is not a whole one; a limit of 0
    would refuse every request, so "no limit" is leaving the field out."""
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{where}.{name}: must be a positive integer (leave it out for no limit), got {value!r}"
        )
    return value


def _models(value: object, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"{where}.models: must be a list of model names")
    return frozenset(value)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, keys: Iterable[ApiKey], insecure_no_auth: bool) -> str | None:
    """Why serving on ``host`` is refused (a public address without keys), or ``None``."""
    if is_loopback(host) or any(True for _ in keys) or insecure_no_auth:
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could spend your "
        "model budget. Configure api_keys (or SLUICEWAY_API_KEYS), bind 127.0.0.1, or pass "
        "--insecure-no-auth if something in front of sluiceway checks callers."
    )


@dataclass(slots=True)
class Caller:
    """Who is making the current request: the key it authenticated with (``None`` when auth is off)."""

    key: ApiKey | None = None


_caller: ContextVar[Caller | None] = ContextVar("sluiceway_caller", default=None)
SCOPE_KEY = "sluiceway.caller"
AUTH_REQUIRED = "sluiceway.auth_required"


def current_key() -> ApiKey | None:
    """The API key of the request being served in this context (``None`` when auth is off)."""
    caller = _caller.get()
    return caller.key if caller is not None else None


def check_websocket(websocket: HTTPConnection) -> ApiKey | None:
    """The key a WebSocket authenticated with; raises if the server needs one and it has none.

    :class:`AuthMiddleware` has already closed unauthenticated sockets before any of their
    messages reach a route; this gives routes the key and a second guard.
    """
    caller: Caller | None = websocket.scope.get(SCOPE_KEY)
    key = caller.key if caller is not None else None
    if key is None and websocket.scope.get(AUTH_REQUIRED, False):
        raise AuthenticationError(MISSING)
    return key


def presented_key(headers: Headers) -> str | None:
    """The key in ``Authorization: Bearer`` or ``x-api-key``, if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def origin_allowed(headers: Headers, origins: frozenset[str]) -> bool:
    """The ``Origin`` check: no Origin (not a browser), the same origin, or a configured one."""
    origin = headers.get("origin")
    if origin is None or "*" in origins or origin in origins:
        return True
    host = headers.get("host")
    return host is not None and origin.split("://", 1)[-1] == host


def is_rebindable_host(host: str | None) -> bool:
    """Whether a ``Host`` header is a domain name someone else could point at this machine.

    DNS rebinding needs a domain the attacker controls (``evil.example``): a dotted name that is not
    an IP address and not ``localhost``. IP literals, ``localhost`` and single-label names
    (``testserver``) cannot be rebound by a web page.
    """
    if not host:
        return False
    name = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]  # [::1]:8000
    name = name.rstrip(".").lower()
    if "." not in name or name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


class AuthMiddleware:
    """Lets through only requests with a known key (HTTP and WebSocket) from an allowed origin.

    Browsers are held to the origin rules whether or not keys are on: a WebSocket handshake or an
    unsafe HTTP method (POST ...) whose ``Origin`` is neither this server nor a configured CORS origin
    gets 403, so no web page can make a user's browser spend this server's models. With keys off,
    ``local_only`` also refuses a ``Host`` that is a domain name, so a page cannot reach a server on
    127.0.0.1 by rebinding its own domain to that address (DNS rebinding).
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        origins: Iterable[str] = (),
        auth_timeout_s: float = 10.0,
        open_paths: frozenset[str] = OPEN_PATHS,
        open_prefixes: tuple[str, ...] = OPEN_PREFIXES,
        local_only: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.local_only = local_only
        self.origins = frozenset(origins)
        self.auth_timeout_s = auth_timeout_s
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._browser_refusal(headers, check_origin=scope["method"] not in SAFE_METHODS)
        if refusal is not None:
            await _error(scope, PermissionDeniedError(refusal), receive, send)
            return
        if not self.keys or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_key(headers)
        key = self.keys.find(presented)
        if key is None:
            error = AuthenticationError(INVALID if presented else MISSING)
            await _error(scope, error, receive, send)
            return
        await self._call(Caller(key), scope, receive, send)

    def _browser_refusal(self, headers: Headers, *, check_origin: bool) -> str | None:
        if self.local_only and is_rebindable_host(headers.get("host")):
            return "without api_keys this server answers only to localhost and IP addresses"
        if check_origin and not origin_allowed(headers, self.origins):
            return "origin not allowed (see cors_origins)"
        return None

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    async def _call(self, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = caller
        token = _caller.set(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        refusal = self._browser_refusal(headers, check_origin=True)
        if refusal is not None:
            await _refuse_handshake(scope, receive, send, 403, refusal)
            return
        scope[AUTH_REQUIRED] = bool(self.keys)
        if not self.keys:
            await self._call(Caller(None), scope, receive, send)
            return
        offered: list[str] = list(scope.get("subprotocols") or [])
        presented = presented_key(headers) or _key_from_subprotocols(offered)
        caller = Caller(self.keys.find(presented))
        if presented is not None and caller.key is None:
            await _refuse_handshake(scope, receive, send, 401, INVALID)
            return
        scope["subprotocols"] = [p for p in offered if not p.startswith(WS_KEY_PREFIX)]
        protocol = WS_PROTOCOL in offered
        gate = _FirstMessageGate(self.keys, caller, receive, send, self.auth_timeout_s, protocol)
        await self._call(caller, scope, gate.receive, gate.send)


def _key_from_subprotocols(offered: list[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(WS_KEY_PREFIX):
            return protocol.removeprefix(WS_KEY_PREFIX) or None
    return None


class _FirstMessageGate:
    """Wraps one WebSocket's ``receive``/``send`` to authenticate by its first message if need be.

    The first data message, if it is ``{"type": "auth", "key": ...}``, is checked and consumed.
    A socket still without a key after it (or after ``timeout_s``) is closed with 4401, the route
    is told the client went away, and whatever the route sends afterwards is dropped. On accept,
    the subprotocol ``sluiceway`` is chosen when the client offered it and the route chose none.
    """

    def __init__(
        self, keys: KeyRing, caller: Caller, receive: Receive, send: Send, timeout_s: float, protocol: bool
    ) -> None:
        self.keys = keys
        self.caller = caller
        self._receive = receive
        self._send = send
        self.timeout_s = timeout_s
        self.protocol = WS_PROTOCOL if protocol else None
        self.checked = False
        self.closed = False

    async def receive(self) -> Message:
        if self.closed:
            return {"type": "websocket.disconnect", "code": WS_UNAUTHORIZED}
        if self.checked:
            return await self._receive()
        message = await self._next()
        if message is None:
            return await self._close("no auth message in time")
        if message["type"] != "websocket.receive":
            return message
        self.checked = True
        key = _auth_message_key(message)
        if key is not None:
            self.caller.key = self.keys.find(key)
            if self.caller.key is None:
                return await self._close(INVALID)
            return await self._receive()
        if self.caller.key is None:
            return await self._close('send {"type": "auth", "key": "<key>"} first')
        return message

    async def _next(self) -> Message | None:
        if self.caller.key is not None:
            return await self._receive()
        try:
            return await asyncio.wait_for(self._receive(), self.timeout_s)
        except TimeoutError:
            return None

    async def _close(self, reason: str) -> Message:
        self.closed = True
        await self._send({"type": "websocket.close", "code": WS_UNAUTHORIZED, "reason": reason})
        return {"type": "websocket.disconnect", "code": WS_UNAUTHORIZED}

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.accept" and not message.get("subprotocol") and self.protocol:
            message = {**message, "subprotocol": self.protocol}
        await self._send(message)


def _auth_message_key(message: Message) -> str | None:
    raw = message.get("text") or message.get("bytes")
    if not raw or len(raw) > 4096:
        return None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:  # also invalid UTF-8 and nesting too deep for json.loads
        return None
    if isinstance(payload, dict) and payload.get("type") == "auth":
        key = payload.get("key")
        return key if isinstance(key, str) else ""
    return None


async def _error(scope: Scope, error: SluicewayError, receive: Receive, send: Send) -> None:
    response = error_response(error.to_event(), Request(scope), error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)


async def _refuse_handshake(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP status if the server can send one, else close."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        error = AuthenticationError(reason) if status == 401 else PermissionDeniedError(reason)
        body = json.dumps(seed_shape(error.to_event(), status))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body.encode()})
        return
    code = WS_UNAUTHORIZED if status == 401 else WS_FORBIDDEN
    await send({"type": "websocket.close", "code": code, "reason": reason})
