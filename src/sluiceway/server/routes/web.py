"""The chat page at ``/``, its static files under ``/static/``, and the JS client at ``/sluiceway.js``.

The files are package data (``sluiceway/web``), so a plain ``pip install`` serves them: no Node, no
build step. They are indexed once, read into memory with an ETag, and served with explicit media
types (never the platform's ``mimetypes`` table, which on some systems calls ``.js`` ``text/plain``
and makes browsers refuse ES modules). Only indexed files are served, so no path can climb out of the
package. ``/sluiceway.js`` is the same file as ``/static/sluiceway.js``; its relative import of the
vendored SSE parser resolves to ``/vendor/...``, which is served too.

The page runs under a strict Content-Security-Policy: scripts only from this origin (no inline
scripts, no ``eval``), no plug-ins, no framing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

router = APIRouter(include_in_schema=False)
PAGE_METHODS = ["GET", "HEAD"]
"""HEAD too (monitors, proxies' checks): FastAPI's ``APIRouter.get`` answers GET only, unlike
Starlette's own routes; the server sends a HEAD answer's headers without its body."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, ready to send."""

    body: bytes
    media_type: str
    etag: str


def web_root() -> Traversable:
    """The page's files inside the installed package."""
    return files("sluiceway") / "web"


@cache
def assets() -> dict[str, Asset]:
    """Every file under ``web/`` by its path relative to it (``vendor/marked.esm.js``)."""
    index: dict[str, Asset] = {}
    _collect(web_root(), "", index)
    return index


def _collect(folder: Traversable, prefix: str, index: dict[str, Asset]) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        path = f"{prefix}{entry.name}"
        if entry.is_dir():
            _collect(entry, f"{path}/", index)
            continue
        body = entry.read_bytes()
        suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        index[path] = Asset(body, MEDIA_TYPES.get(suffix, TEXT), etag)


def serve(path: str, request: Request, headers: dict[str, str] | None = None) -> Response:
    """The file at ``path`` (404 if the page has no such file), revalidated by its ETag."""
    asset = assets().get(path)
    if asset is None:
        raise HTTPException(404, f"no such file: {path}")
    all_headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        **(headers or {}),
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=all_headers)
    return Response(asset.body, media_type=asset.media_type, headers=all_headers)


@router.api_route("/", methods=PAGE_METHODS)
async def page(request: Request) -> Response:
    """The chat page."""
    return serve("index.html", request, PAGE_HEADERS)


@router.api_route("/sluiceway.js", methods=PAGE_METHODS)
async def client(request: Request) -> Response:
    """The JS client as an ES module (``import { streamChat } from "/sluiceway.js"``)."""
    return serve("sluiceway.js", request)


@router.api_route("/static/{path:path}", methods=PAGE_METHODS)
async def static(path: str, request: Request) -> Response:
    """The page's modules, styles and vendored libraries."""
    return serve(path, request)


@router.api_route("/vendor/{path:path}", methods=PAGE_METHODS)
async def vendor(path: str, request: Request) -> Response:
    """Vendored libraries, where ``/sluiceway.js``'s relative imports look for them."""
    return serve(f"vendor/{path}", request)
