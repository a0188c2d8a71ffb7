"""The chat page in a real browser: Debian's Chromium driven by Playwright against a real server.

Nothing is stubbed between the page and the server: answers come from the ``echo`` models (or the
embedded ``local`` model) through uvicorn on a loopback port. Waits are Playwright's own
(``wait_for_selector`` / ``wait_for_function``) or bounded polls, never bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from tests.live import LiveServer, live_server, make_settings

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
LONG = " ".join(f"word{i}" for i in range(400))  # 400 tokens: 20 s at 50 ms/token, far longer than a test


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need it under CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (skipped when missing, failed under CI=true)."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module; a long disconnect grace, so only an explicit Stop cancels fast."""
    settings = make_settings(
        data_dir=str(tmp_path_factory.mktemp("data")),
        disconnect_grace_s=60,
        models={
            "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
            "echo-fail": ModelConfig(
                "echo-fail", "echo", options={"fail_after": 3, "fail_code": "upstream_error"}
            ),
            "echo-fail-early": ModelConfig(
                "echo-fail-early", "echo", options={"fail_after": 0, "fail_code": "upstream_unavailable"}
            ),
        },
    )
    with live_server(settings) as live:
        yield live


class Page:
    """A page of the chat in its own browser context, with the JS errors it raised."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        context.setdefault("viewport", {"width": 1100, "height": 760})
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)
        self.url = url

    def _console(self, message: Any) -> None:
        # a refused fetch is logged by Chromium itself; anything else (a CSP violation, an exception) is ours
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def open(self) -> Any:
        self.page.goto(self.url)
        self.page.wait_for_selector("html[data-ready=true]")
        return self.page

    def send(self, text: str, model: str = "echo") -> None:
        page = self.page
        page.select_option("#model", model)
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")

    def last_answer(self) -> Any:
        return self.page.locator(".msg.assistant").last

    def wait_state(self, state: str) -> Any:
        self.page.wait_for_selector(f".msg.assistant:last-of-type[data-state={state}]")
        return self.last_answer()

    def wait_text(self, predicate: str) -> None:
        """Wait until ``predicate`` (JS, over ``t``: the last answer's text) holds."""
        self.page.wait_for_function(
            f"() => {{ const m = [...document.querySelectorAll('.msg.assistant')].at(-1);"
            f" const t = m ? m.querySelector('.md').textContent : ''; return {predicate}; }}"
        )


@pytest.fixture
def open_page(browser: Any, srv: LiveServer) -> Iterator[Callable[..., Page]]:
    """Open chat pages on ``srv``; each fails its test if the page raised a JS error."""
    pages: list[Page] = []

    def factory(**context: Any) -> Page:
        page = Page(browser, srv.url, **context)
        pages.append(page)
        return page

    yield factory
    for page in pages:
        page.context.close()
    assert [e for p in pages for e in p.errors] == []


class CuttableProxy:
    """A TCP forwarder on loopback whose connections can all be cut at once (a network drop)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection, as a flaky network would."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def final_event(url: str, stream_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The last JSON event of a stream, read by resuming it from the start once it ends."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{url}/chat/stream/{stream_id}?after=0", timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
            if line == "data: [DONE]" or time.monotonic() > deadline:
                break
    assert events, "the stream has no events"
    return events[-1]


def test_echo_answer_shows_the_exact_text(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.open()
    message = "Hello there, how's the river today? Fine - thanks (mostly) & 100% dry; ünïcödé ✓ 😀 works."
    chat.send(message)
    answer = chat.wait_state("done")
    assert answer.locator(".md").inner_text() == message
    assert page.evaluate("window.sluicewayApp.conversation.messages.at(-1).content") == message
    assert page.locator(".msg.user .bubble").last.inner_text() == message
    stats = answer.locator(".stats").inner_text()
    assert re.search(r"TTFT \d+ ms · \d+ tokens · [\d.]+ tok/s", stats), stats
    assert float(answer.get_attribute("data-ttft-ms") or "nan") >= 0
    assert page.get_attribute("#transcript", "aria-live") == "polite"
    assert page.get_attribute("#transcript", "aria-busy") == "false"


def test_shift_enter_is_a_new_line_and_enter_sends(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.open()
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.locator(".msg").count() == 0
    page.press("#prompt", "Enter")
    answer = chat.wait_state("done")
    assert page.input_value("#prompt") == ""
    assert page.locator(".msg.user .bubble").inner_text() == "first line\nsecond line"
    assert (
        page.evaluate("window.sluicewayApp.conversation.messages.at(-1).content") == "first line\nsecond line"
    )
    assert answer.locator(".md").inner_text() == "first line second line"  # markdown: a soft line break


def test_markdown_and_code_render_with_a_copy_button(open_page: Callable[..., Page]) -> None:
    chat = open_page(permissions=["clipboard-read", "clipboard-write"])
    page = chat.open()
    chat.send(
        "# Title\n\nSome **bold** text.\n\n```python\ndef f(x):\n    return x * 2\n```\n\n- one\n- two\n"
    )
    answer = chat.wait_state("done")
    assert answer.locator(".md h1").inner_text() == "Title"
    assert answer.locator(".md strong").inner_text() == "bold"
    assert answer.locator(".md li").count() == 2
    code = answer.locator(".code-block code.language-python")
    assert code.inner_text() == "def f(x):\n    return x * 2\n"
    page.wait_for_selector(".code-block code.language-python.hljs .hljs-keyword")  # highlighted
    answer.locator(".copy-code").click()
    page.wait_for_function("() => document.querySelector('.copy-code').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == "def f(x):\n    return x * 2\n"


def test_model_output_cannot_run_script(open_page: Callable[..., Page]) -> None:
    # CSP bypassed on purpose: the sanitiser alone must stop every payload.
    chat = open_page(bypass_csp=True)
    page = chat.open()
    payload = (
        'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>\n\n'
        '<svg onload="window.__pwned=3"></svg>\n\n'
        "[click me](javascript:window.__pwned=4) and ![pic](javascript:window.__pwned=5)\n\n"
        '<a href="javascript:window.__pwned=6">raw link</a> <b onmouseover="window.__pwned=7">bold?</b>'
    )
    chat.send(payload)
    answer = chat.wait_state("done")
    md = answer.locator(".md")
    text = md.inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in text
    assert "<script>window.__pwned=2</script>" in text
    for tag in ("script", "svg", "b"):
        assert md.locator(tag).count() == 0, tag
    handlers = "[...document.querySelectorAll('.md *')].flatMap(e => [...e.attributes]).map(a => a.name)"
    assert [name for name in page.evaluate(handlers) if name.startswith("on")] == []
    for image in md.locator("img").all():  # the markdown image survives without its javascript: source
        src = image.get_attribute("src")
        assert src is None or src.startswith(("http:", "https:")), src
    for link in md.locator("a").all():
        href = link.get_attribute("href")
        assert href is None or href.startswith(("http:", "https:", "mailto:", "#")), href
        link.click()
    md.hover()
    page.wait_for_timeout(300)  # give any handler that slipped through the chance to run
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script:not([src])").count() == 0


def test_stop_cancels_the_generation_on_the_server(open_page: Callable[..., Page], srv: LiveServer) -> None:
    chat = open_page()
    page = chat.open()
    chat.send(LONG, model="echo-slow")
    chat.wait_text("t.length > 30")
    assert page.get_attribute("#transcript", "aria-busy") == "true"
    assert page.is_visible("#stop") and not page.is_visible("#send")
    stopped_at = time.monotonic()
    page.click("#stop")
    answer = chat.wait_state("stopped")
    stream_id = answer.get_attribute("data-stream-id")
    assert stream_id
    end = final_event(srv.url, stream_id)
    assert end["type"] == "done" and end["finish_reason"] == "cancelled", end
    assert end["usage"]["output_tokens"] < 400
    assert time.monotonic() - stopped_at < 10  # the grace is 60 s: only the explicit cancel is this fast
    partial = answer.locator(".md").inner_text()
    assert partial and LONG.startswith(partial)
    assert "Stopped" in answer.locator(".stats").inner_text()
    assert page.is_visible("#send") and page.get_attribute("#transcript", "aria-busy") == "false"


def test_errors_show_inline_with_the_servers_message(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.open()
    # mid-stream: the text so far stays, the in-band error is shown with Retry
    chat.send("one two three four five six", model="echo-fail")
    answer = chat.wait_state("error")
    alert = answer.locator("[role=alert]")
    assert "echo failed after 3 tokens (as configured)" in alert.inner_text()
    assert alert.get_attribute("data-code") == "upstream_error"
    assert answer.locator(".md").inner_text() == "one two three"
    alert.locator("button.retry").click()
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant:last-of-type .alert .retry') !== null"
    )
    chat.wait_state("error")
    assert page.locator(".msg.assistant").count() == 1  # retried in place
    # before the stream: the JSON error, with its code and status
    chat.send("hello", model="echo-fail-early")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant[data-state=error]').length === 2")
    early = chat.last_answer().locator("[role=alert]")
    assert "echo failed after 0 tokens" in early.inner_text()
    assert "upstream_unavailable" in early.inner_text() and "503" in early.inner_text()


def stored_turns(url: str, conversation_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The server's messages of a conversation once none is still streaming (a bounded poll)."""
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.get(f"{url}/conversations/{conversation_id}").json()["messages"]
        if all(m["status"] != "streaming" for m in found) or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.05)


def test_retry_replaces_the_failed_turn_on_the_server(
    open_page: Callable[..., Page], srv: LiveServer
) -> None:
    chat = open_page()
    page = chat.open()
    chat.send("retry me a b c d e f", model="echo-fail")
    chat.wait_state("error")
    conversation_id = page.evaluate("window.sluicewayApp.conversation.id")
    first = stored_turns(srv.url, conversation_id)[-1]
    chat.last_answer().locator("button.retry").click()
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant:last-of-type .alert .retry') !== null"
    )
    stored = stored_turns(srv.url, conversation_id)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "error")]
    assert stored[0]["content"] == "retry me a b c d e f" and stored[1]["content"] == "retry me a "
    assert stored[1]["id"] != first["id"]
    assert stored[1]["usage"]["input_tokens"] == first["usage"]["input_tokens"]  # asked once, as before
    page.reload()
    page.wait_for_selector(".msg.assistant[data-state=error]")
    assert page.locator(".msg.user").count() == 1 and page.locator(".msg.assistant").count() == 1


def test_retry_after_an_error_without_text_asks_once(open_page: Callable[..., Page], srv: LiveServer) -> None:
    chat = open_page()
    page = chat.open()
    chat.send("first question")
    chat.wait_state("done")
    chat.send("second question", model="echo-fail-early")
    chat.wait_state("error")
    conversation_id = page.evaluate("window.sluicewayApp.conversation.id")
    page.select_option("#model", "echo")
    chat.last_answer().locator("button.retry").click()
    answer = chat.wait_state("done")
    assert answer.locator(".md").inner_text() == "second question"
    stored = stored_turns(srv.url, conversation_id)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "first question", "complete"),
        ("assistant", "first question", "complete"),
        ("user", "second question", "complete"),
        ("assistant", "second question", "complete"),
    ]
    assert stored[-1]["usage"]["input_tokens"] == 2 + 2 + 2
    page.reload()
    page.wait_for_selector(".msg.assistant[data-state=done]")
    assert page.locator(".msg.user").count() == 2 and page.locator(".msg.assistant").count() == 2


def test_reload_mid_answer_shows_the_full_answer(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.open()
    message = " ".join(f"w{i}" for i in range(60))  # 3 s at 50 ms/token
    chat.send(message, model="echo-slow")
    chat.wait_text("t.length > 20")
    first_stream = chat.last_answer().get_attribute("data-stream-id")
    assert page.evaluate("JSON.parse(sessionStorage.getItem('sluiceway.active')).streamId") == first_stream
    page.reload()
    page.wait_for_selector("html[data-ready=true]")
    answer = chat.wait_state("done")
    assert answer.get_attribute("data-stream-id") == first_stream  # reattached, not asked again
    assert answer.locator(".md").inner_text() == message  # whole, no gap, nothing twice
    assert page.locator(".msg.user .bubble").last.inner_text() == message
    assert page.locator(".msg.assistant").count() == 1
    assert page.evaluate("sessionStorage.getItem('sluiceway.active')") is None


def test_stopping_a_resumed_answer_shows_the_live_rate_not_the_replays(
    open_page: Callable[..., Page],
) -> None:
    chat = open_page()
    page = chat.open()
    chat.send(LONG, model="echo-slow")  # 20 tokens/s at most (50 ms before each)
    chat.wait_text("t.length > 250")  # ~40 tokens, replayed at once after the reload
    page.reload()  # the page is "ready" only once the resumed answer ends: wait for the words instead
    chat.wait_text("t.length > 480")  # ~30 tokens more, live
    page.click("#stop")
    answer = chat.wait_state("stopped")
    rate = float(answer.get_attribute("data-tokens-per-s") or "nan")
    assert 12 <= rate <= 21, answer.locator(".stats").inner_text()


def test_a_network_drop_mid_answer_is_resumed(browser: Any, srv: LiveServer) -> None:
    proxy = CuttableProxy(int(srv.url.rsplit(":", 1)[1]))
    chat = Page(browser, proxy.url)
    try:
        page = chat.open()
        message = " ".join(f"d{i}" for i in range(50))
        chat.send(message, model="echo-slow")
        chat.wait_text("t.length > 20")
        proxy.cut()
        answer = chat.wait_state("done")
        assert answer.locator(".md").inner_text() == message  # nothing lost, nothing twice
        assert page.evaluate("window.sluicewayApp.perf.reconnects") >= 1
        assert answer.locator(".note").is_hidden()
        assert [e for e in chat.errors if "ERR_" not in e] == []
    finally:
        chat.context.close()
        proxy.close()


def test_conversations_in_the_sidebar(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.open()
    chat.send("Sidebar question one")
    chat.wait_state("done")
    page.wait_for_selector(".conversation:has-text('Sidebar question one')")
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    chat.send("Sidebar question two")
    chat.wait_state("done")
    page.click(".conversation:has-text('Sidebar question one')")
    page.wait_for_function(
        "() => document.querySelector('.msg.user .bubble')?.textContent === 'Sidebar question one'"
    )
    assert page.locator(".msg").count() == 2
    assert page.locator(".msg.assistant .md").inner_text() == "Sidebar question one"


def test_conversations_fall_back_to_local_storage(open_page: Callable[..., Page]) -> None:
    chat = open_page()
    page = chat.page
    # a server without the conversations API
    page.route(re.compile(r"/conversations(\?.*)?$"), lambda route: route.fulfill(status=404, json={}))
    chat.open()
    assert page.inner_text("#store-note") == "Saved in this browser only."
    chat.send("Kept in this browser")
    chat.wait_state("done")
    stored = page.evaluate("JSON.parse(localStorage.getItem('sluiceway.conversations'))")
    assert stored[0]["messages"][0] == {"role": "user", "content": "Kept in this browser"}
    assert stored[0]["messages"][1]["content"] == "Kept in this browser"
    assert stored[0]["messages"][1]["status"] == "complete"
    page.reload()
    page.wait_for_selector(".msg.assistant[data-state=done]")
    assert page.locator(".msg.assistant .md").inner_text() == "Kept in this browser"


def test_autoscroll_follows_until_the_reader_scrolls_up(open_page: Callable[..., Page]) -> None:
    chat = open_page(viewport={"width": 800, "height": 500})
    page = chat.open()
    chat.send("\n\n".join(f"Paragraph {i} of a long answer." for i in range(80)), model="echo-slow")
    distance = (
        "(() => { const t = document.getElementById('transcript');"
        " return t.scrollHeight - t.scrollTop - t.clientHeight; })()"
    )
    page.wait_for_function("() => document.getElementById('transcript').scrollHeight > 1200")
    assert page.evaluate(distance) < 60  # following
    page.mouse.move(400, 250)
    page.mouse.wheel(0, -600)
    page.wait_for_selector("#jump:visible")
    page.wait_for_function(f"() => {distance} > 800")  # the answer grows, the reader stays put
    page.click("#jump")
    page.wait_for_function(f"() => {distance} < 60")
    page.click("#stop")
    chat.wait_state("stopped")


def test_works_at_360_px(open_page: Callable[..., Page]) -> None:
    chat = open_page(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = chat.open()
    chat.send("A long line: " + "x" * 300 + "\n\n```\n" + "y" * 300 + "\n```")
    chat.wait_state("done")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for selector in ("#prompt", "#send", "#model", "#open-sidebar"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, selector
    assert not page.locator("#new-chat").is_visible() or page.locator("#sidebar").bounding_box()["x"] < 0
    page.click("#open-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    assert page.locator("#new-chat").is_visible()


def test_unreachable_server_is_a_clear_state(browser: Any, tmp_path: Path) -> None:
    chat = Page(browser, "")
    try:
        with live_server(make_settings(data_dir=str(tmp_path))) as live:
            chat.url = live.url
            page = chat.open()
        # the server is gone now
        chat.send("anyone there?")
        answer = chat.wait_state("error")
        assert "Can't reach the sluiceway server" in answer.locator("[role=alert]").inner_text()
        page.wait_for_selector("#banner:visible")
        assert "Can't reach the sluiceway server" in page.inner_text("#banner")
        assert page.get_attribute("#app", "data-server") == "unreachable"
        assert [e for e in chat.errors if "Failed to fetch" not in e] == []
    finally:
        chat.context.close()


@pytest.mark.local
def test_local_model_text_appears_before_the_answer_ends(browser: Any, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    with live_server(make_settings(data_dir=str(tmp_path), default_model="local")) as live:
        if "local" not in httpx.get(f"{live.url}/healthz").json()["models"]:
            pytest.skip("the embedded model could not load here")
        chat = Page(browser, live.url)
        try:
            page = chat.open()
            chat.send("Write a long story about a river and the town beside it.", model="local")
            page.wait_for_function(
                "() => { const m = document.querySelector('.msg.assistant'); return m.dataset.state"
                " === 'streaming' && m.querySelector('.md').textContent.trim().length > 0; }",
                timeout=60_000,
            )
            if page.is_visible("#stop"):
                page.click("#stop")
            page.wait_for_selector(".msg.assistant:not([data-state=streaming])", timeout=30_000)
            assert chat.last_answer().locator(".md").inner_text().strip()
            assert chat.errors == []
        finally:
            chat.context.close()
