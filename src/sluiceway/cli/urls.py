"""The server URL the commands that talk HTTP (``chat``, ``bench``, ``doctor``) are given, checked once.

httpx refuses a malformed URL only when the first request is made, as ``httpx.InvalidURL``; checking
first turns that into the usage error the commands promise (exit code 2, one line).
"""

from __future__ import annotations


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a server's base URL, or ``None`` when it will do."""
    import httpx  # imported by the commands that talk HTTP, not by ``serve``

    if not url.startswith(("http://", "https://")):
        return f"URL must start with http:// or https://, got {url!r}"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"invalid URL {url!r}: {exc}"
    if not parsed.host:
        return f"invalid URL {url!r}: no host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"invalid URL {url!r}: port {parsed.port} is out of range (1-65535)"
    return None
