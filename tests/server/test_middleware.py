"""The layers before the routes: body size (413 without reading), security headers, CORS."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.server.app import create_app
from sluiceway.server.middleware import CONTENT_SECURITY_POLICY
from tests.live import LiveServer, live_server, make_settings

LIMIT = 64 * 1024
KEY = "sk-middleware-" + "m" * 16
ORIGIN = "https://app.example"


class BodyCounter:
    """Outermost ASGI layer: counts the request-body bytes the app pulled from the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting() -> Message:
            message = await receive()
            self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


@pytest.fixture(scope="module")
def counter() -> BodyCounter:
    return BodyCounter(create_app(make_settings(max_body_bytes=LIMIT)))


@pytest.fixture(scope="module")
def srv(counter: BodyCounter) -> Iterator[LiveServer]:
    with live_server(app=counter) as live:  # type: ignore[arg-type]
        yield live


def raw_request(srv: LiveServer, head: str) -> socket.socket:
    url = urlsplit(srv.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=5)
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket timeout)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_a_declared_length_over_the_limit_is_413_before_any_body_byte(
    srv: LiveServer, counter: BodyCounter
) -> None:
    counter.read = 0
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {64 * 1024 * 1024}\r\n\r\n"
    )
    with raw_request(srv, head) as sock:  # not one byte of the 64 MiB is sent
        response = read_response(sock)
    status, _, rest = response.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"connection: close" in rest.lower()
    assert b'"type":"request_too_large"' in rest
    assert f"larger than the limit of {LIMIT} bytes".encode() in rest
    assert counter.read == 0


def test_a_streamed_upload_over_the_limit_is_cut_off(srv: LiveServer, counter: BodyCounter) -> None:
    """A chunked upload of up to 64 MiB: the server answers 413 and stops reading after the limit."""
    counter.read = 0
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 16384
    frame = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent = 0
    with raw_request(srv, head) as sock:
        sock.settimeout(1)
        deadline = time.monotonic() + 20
        while sent < 64 * 1024 * 1024 and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading or closed the connection
            sent += len(piece)
        sock.settimeout(5)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b'"error":{"message":"request body is larger than the limit' in response
    # read: the limit plus at most what the server had buffered when the limit was passed
    assert LIMIT < counter.read <= LIMIT + 256 * 1024
    assert sent < 32 * 1024 * 1024  # the server never drained the upload


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/chat/stream", lambda b: b["error"]["code"] == "request_too_large"),
        ("/v1/chat/completions", lambda b: b["error"]["type"] == "invalid_request_error"),
        ("/v1/messages", lambda b: b["error"]["type"] == "request_too_large"),
        ("/api/chat", lambda b: b["error"]["code"] == "request_too_large"),
    ],
)
def test_413_comes_in_the_protocols_shape(srv: LiveServer, path: str, check: object) -> None:
    r = httpx.post(srv.url + path, content=b"[" + b"1," * LIMIT + b"1]", timeout=10)
    assert r.status_code == 413
    assert check(r.json())  # type: ignore[operator]


def test_a_body_within_the_limit_is_served(srv: LiveServer) -> None:
    r = httpx.post(srv.url + "/chat/stream", json={"message": "x" * (LIMIT - 100)}, timeout=10)
    assert r.status_code == 200


# --- security headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/sluiceway.js", "/healthz", "/no-such-page"])
def test_page_and_api_responses_carry_the_security_headers(srv: LiveServer, path: str) -> None:
    r = httpx.get(srv.url + path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp


def test_the_page_csp_forbids_inline_scripts() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["object-src"] == "'none'"


def test_api_docs_keep_working_without_the_page_csp(srv: LiveServer) -> None:
    r = httpx.get(srv.url + "/docs")
    assert r.status_code == 200 and "content-security-policy" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"


# --- CORS --------------------------------------------------------------------------------------------


def test_cors_is_off_unless_origins_are_configured(srv: LiveServer) -> None:
    r = httpx.options(
        srv.url + "/chat/stream",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(srv.url + "/chat/stream", json={"message": "hi"}, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers


@pytest.fixture(scope="module")
def cors_srv() -> Iterator[LiveServer]:
    with live_server(make_settings(cors_origins=[ORIGIN], api_keys=[KEY])) as live:
        yield live


def test_configured_origins_get_cors_answers(cors_srv: LiveServer) -> None:
    preflight = httpx.options(
        cors_srv.url + "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    r = httpx.post(
        cors_srv.url + "/chat/stream",
        json={"message": "hi"},
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"},
    )
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-stream-id" in r.headers["access-control-expose-headers"].lower()
    # a refused key still gets CORS headers, so the page can read the error
    r = httpx.post(cors_srv.url + "/chat/stream", json={"message": "hi"}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN


def test_other_origins_get_no_cors_answers(cors_srv: LiveServer) -> None:
    evil = "https://evil.example"
    preflight = httpx.options(
        cors_srv.url + "/chat/stream", headers={"Origin": evil, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    r = httpx.post(
        cors_srv.url + "/chat/stream",
        json={"message": "hi"},
        headers={"Origin": evil, "Authorization": f"Bearer {KEY}"},
    )
    assert "access-control-allow-origin" not in r.headers
