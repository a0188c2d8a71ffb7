"""The chat page's route: what it serves, with which types and headers, and what it never serves."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import httpx
import pytest

from sluiceway.server.routes import web
from tests.live import LiveServer, live_server, make_settings

REPO = Path(__file__).resolve().parents[2]
WEB = files("sluiceway") / "web"
OWN_MODULES = ["app.js", "conversations.js", "markdown.js", "render.js", "sluiceway.js", "transcript.js"]
IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}/[^"']+)["']""")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module: these tests only read files."""
    with live_server(make_settings(data_dir=str(tmp_path_factory.mktemp("data")))) as live:
        yield live


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_page_is_served_with_a_strict_csp(server: LiveServer) -> None:
    r = httpx.get(f"{server.url}/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/sluiceway.js", "/vendor/marked.esm.js"])
def test_head_answers_like_get_without_the_body(server: LiveServer, path: str) -> None:
    head, get = httpx.head(server.url + path), httpx.get(server.url + path)
    assert (head.status_code, get.status_code) == (200, 200) and head.content == b""
    for name in ("content-type", "content-length", "etag", "content-security-policy"):
        assert head.headers.get(name) == get.headers.get(name), name
    assert httpx.head(f"{server.url}/static/nope.js").status_code == 404


def test_page_has_no_inline_script_handler_or_style() -> None:
    parser = _Tags()
    parser.feed((WEB / "index.html").read_text())
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert parser.script_text == ""
    for tag, attrs in parser.tags:
        assert not [name for name in attrs if name.startswith("on")], tag
        assert "style" not in attrs, tag
        assert not any((value or "").strip().lower().startswith("javascript:") for value in attrs.values())


@pytest.mark.parametrize("module", OWN_MODULES)
def test_own_modules_never_use_eval_or_inner_html(module: str) -> None:
    source = (WEB / module).read_text()
    assert not re.search(
        r"\beval\s*\(|new Function\s*\(|\.innerHTML\s*=|\.outerHTML\s*=|insertAdjacentHTML", source
    )


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/sluiceway.js", "text/javascript; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
        ("/static/vendor/purify.es.mjs", "text/javascript; charset=utf-8"),
        ("/static/vendor/MANIFEST.json", "application/json"),
        ("/static/vendor/licenses/marked.LICENSE", "text/plain; charset=utf-8"),
        ("/vendor/eventsource-parser/index.js", "text/javascript; charset=utf-8"),
    ],
)
def test_files_have_explicit_media_types(server: LiveServer, path: str, media_type: str) -> None:
    r = httpx.get(f"{server.url}{path}")
    assert r.status_code == 200
    assert r.headers["content-type"] == media_type
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_client_has_one_source(server: LiveServer) -> None:
    served = httpx.get(f"{server.url}/sluiceway.js").content
    assert served == httpx.get(f"{server.url}/static/sluiceway.js").content
    assert served == (WEB / "sluiceway.js").read_bytes()
    # js/ (npm, node --test) re-exports the packaged file rather than keeping a copy
    reexport = (REPO / "js" / "sluiceway.js").read_text()
    assert 'export * from "../src/sluiceway/web/sluiceway.js";' in reexport
    assert "function" not in reexport


@pytest.mark.parametrize("module", OWN_MODULES)
def test_every_relative_import_resolves_on_the_server(server: LiveServer, module: str) -> None:
    base = f"{server.url}/static/{module}"
    for target in IMPORT.findall((WEB / module).read_text()):
        url = str(httpx.URL(base).join(target))
        assert httpx.get(url).status_code == 200, f"{module} imports {target}: {url}"
    if module == "sluiceway.js":  # imported from /sluiceway.js too, where ./vendor/ is /vendor/
        for target in IMPORT.findall((WEB / module).read_text()):
            assert httpx.get(str(httpx.URL(f"{server.url}/sluiceway.js").join(target))).status_code == 200


def test_etag_revalidation(server: LiveServer) -> None:
    first = httpx.get(f"{server.url}/static/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = httpx.get(f"{server.url}/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/../server/app.py",
        "/static/%2e%2e/server/app.py",
        "/static/..%2f..%2fpyproject.toml",
        "/vendor/../app.js",
        "/static/vendor",
        "/static/",
    ],
)
def test_nothing_outside_the_page_is_served(server: LiveServer, path: str) -> None:
    r = httpx.get(f"{server.url}{path}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert "error" in r.json()


def test_only_page_files_are_indexed() -> None:
    paths = set(web.assets())
    assert "index.html" in paths and "vendor/marked.esm.js" in paths
    assert not [p for p in paths if p.endswith(".py") or "/." in p or p.startswith(".")]


def test_vendored_files_match_their_manifest() -> None:
    manifest = json.loads((WEB / "vendor" / "MANIFEST.json").read_text())
    pins = json.loads((REPO / "js" / "package.json").read_text())["devDependencies"]
    assert {p["name"]: p["version"] for p in manifest["packages"]} == pins
    for package in manifest["packages"]:
        assert package["integrity"].startswith("sha512-") and package["license"]
        assert any(name.startswith("licenses/") for name in package["files"]), package["name"]
        for name, digest in package["files"].items():
            data = (WEB / "vendor" / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{name} differs from the npm package"
    listed = {name for p in manifest["packages"] for name in p["files"]} | {"MANIFEST.json"}
    on_disk = {p for p in web.assets() if p.startswith("vendor/")}
    assert on_disk == {f"vendor/{name}" for name in listed}, "a vendored file is not in the manifest"
