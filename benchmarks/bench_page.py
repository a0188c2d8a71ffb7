"""How the chat page holds up while a 10,000-token markdown answer streams into it.

A real server (uvicorn on a free loopback port, in a thread) serves the page and two ``echo``
models: one at 0 ms per token (the whole answer arrives in bursts) and one at 5 ms per token. The
answer is markdown with headings, lists, tables and fenced code, exactly ``--tokens`` echo tokens
long; ``echo`` streams it back as the answer. Debian's Chromium (headless, via Playwright) types it
into the page and presses Enter; the script then measures:

* ``first_glyph_ms``: from the Enter keydown to the frame after the first answer text was rendered
  (the page's own ``perf.firstPaintMs``: ``requestAnimationFrame`` + a task after the first render);
* ``longest_task_ms``: the longest ``PerformanceObserver('longtask')`` entry while streaming (only
  tasks >= 50 ms are reported by the browser; none means every task stayed under 50 ms);
* ``task_wall_ms`` / ``task_cpu_ms``: the longest task of the page's main thread from a Chromium trace
  (``toplevel`` category): its wall time and its CPU time. On a shared machine wall time includes
  the time the thread waited for a core; CPU time is the page's own work;
* ``longest_render_ms``: the page's longest single render (one animation frame's markdown work);
* ``scripting_ms``: CDP ``Performance.getMetrics`` ``ScriptDuration`` from Enter to done;
* ``render_ms_per_1k``: the page's render time for drawing each successive 1,000 tokens; ``growth``
  is the last 1k's over the first 1k's. Linear scripting means a flat profile (growth about 1); a
  renderer that re-parses the whole answer per token would grow about 10x from the first to the
  tenth 1k.

Run: ``.venv/bin/python benchmarks/bench_page.py [--tokens 10000] [--delays 0,5] [--runs 1]
[--cpu-throttle 1] [--write-docs]``. ``--write-docs`` replaces the "## Web page" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from sluiceway.providers.base import ModelConfig
from sluiceway.providers.echo import split_words
from sluiceway.server.app import create_app
from sluiceway.server.settings import load_settings

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Web page"
PROBE = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longtasks.push([entry.startTime, entry.duration]);
}).observe({ type: "longtask", buffered: true });
"""


def markdown_answer(tokens: int) -> str:
    """Markdown with prose, lists, tables and code fences, exactly ``tokens`` echo tokens long."""
    parts: list[str] = []
    count = 0
    section = 0
    while count < tokens:
        section += 1
        block = (
            f"## Section {section}: streaming without jank\n\n"
            f"This paragraph explains part {section} with **bold words**, *emphasis*, `inline code` and a "
            f"[link](https://example.com/{section}). It keeps going for a while so that the paragraph "
            "wraps over several lines in a normal window.\n\n"
            f"- item one of section {section}\n- item two with `code`\n- item three\n\n"
            "| name | value |\n|---|---|\n"
            f"| alpha | {section} |\n| beta | {section * 2} |\n\n"
            "```python\n"
            f"def handler_{section}(request):\n"
            "    total = 0\n"
            "    for value in request.values:\n"
            "        total += value * 2\n"
            "    return {'total': total}\n"
            "```\n\n"
        )
        parts.append(block)
        count += len(split_words(block))
    pieces = split_words("".join(parts))[:tokens]
    return "".join(pieces).rstrip() + "\n"


@contextmanager
def serve(data_dir: str) -> Iterator[str]:
    """The app with ``echo`` (0 ms/token) and ``echo-5ms``, on a free loopback port."""
    settings = load_settings(None, env={}, overrides={"default_model": "echo", "data_dir": data_dir})
    settings = replace(
        settings,
        models={
            "echo": ModelConfig("echo", "echo", options={"delay_ms": 0}),
            "echo-5ms": ModelConfig("echo-5ms", "echo", options={"delay_ms": 5}),
        },
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def script_ms(cdp: Any) -> float:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return float(metrics["ScriptDuration"]) * 1000


def run_once(browser: Any, url: str, model: str, answer: str, tokens: int, throttle: float) -> dict[str, Any]:
    """Stream ``answer`` from ``model`` into a fresh page; return the measurements."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.add_init_script(PROBE)
        page.goto(url)
        page.wait_for_selector("html[data-ready=true]")
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        if throttle > 1:
            cdp.send("Emulation.setCPUThrottlingRate", {"rate": throttle})
        page.select_option("#model", model)
        page.eval_on_selector("#prompt", "(el, text) => { el.value = text; }", answer)
        before = script_ms(cdp)
        browser.start_tracing(page=page, categories=["toplevel"])
        page.press("#prompt", "Enter")
        page.wait_for_selector(
            ".msg.assistant[data-state=done]", timeout=int((tokens * 0.02 + 120) * 1000 * throttle)
        )
        page.wait_for_function("() => window.sluicewayApp.perf.firstPaintMs !== null")
        scripting = script_ms(cdp) - before
        tasks = main_thread_tasks(browser.stop_tracing())
        perf = page.evaluate(
            "(() => { const app = window.sluicewayApp, p = app.perf;"
            " return { first: p.firstPaintMs, tokens: p.tokens, breakdown: [p.requestMs, p.headersMs,"
            " p.firstChunkMs, p.firstRenderMs, p.firstPaintMs].map((ms) => Math.round(ms * 10) / 10),"
            " renderer: p.renderer.stats, text: app.conversation.messages.at(-1).content }; })()"
        )
        longtasks = page.evaluate(
            "window.__longtasks.filter(([start]) => start >= window.sluicewayApp.perf.sentAt)"
            ".map(([, duration]) => duration)"
        )
    finally:
        context.close()
    if perf["text"] != answer:
        raise AssertionError("the page did not receive the whole answer")
    renderer = perf["renderer"]
    per_1k = render_per_1k(answer, renderer["trace"])
    return {
        "model": model,
        "tokens": perf["tokens"],
        "first_glyph_ms": round(perf["first"], 1),
        # ms after Enter: the request starts, response headers, first chunk read, drawn, painted
        "first_glyph_breakdown_ms": perf["breakdown"],
        "longest_task_ms": round(max(longtasks), 1) if longtasks else None,
        "task_wall_ms": round(max(wall for wall, _ in tasks), 1),
        "task_cpu_ms": round(max(cpu for _, cpu in tasks), 1),
        "tasks_over_50ms_cpu": sum(cpu >= 50 for _, cpu in tasks),
        "long_tasks": len(longtasks),
        "longest_render_ms": round(renderer["maxRenderMs"], 1),
        "renders": renderer["renders"],
        "render_ms": round(renderer["renderMs"], 1),
        "scripting_ms": round(scripting, 1),
        "render_ms_per_1k": per_1k,
        "growth": round(per_1k[-1] / per_1k[0], 2) if len(per_1k) >= 2 and per_1k[0] > 0 else None,
    }


def short_question_glyphs(browser: Any, url: str, runs: int = 5) -> list[float]:
    """First glyph (ms after Enter) for short questions: the 10k-token runs must first send and show
    a 50 KB question (``echo`` answers with the question), which a real question does not."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("html[data-ready=true]")
        glyphs = []
        for i in range(1, runs + 1):
            page.fill("#prompt", f"Question {i}: how does the gateway stream an answer?")
            page.press("#prompt", "Enter")
            page.wait_for_function(
                f"() => document.querySelectorAll('.msg.assistant[data-state=done]').length === {i}"
                " && window.sluicewayApp.perf.firstPaintMs !== null"
            )
            glyphs.append(round(page.evaluate("window.sluicewayApp.perf.firstPaintMs"), 1))
        return glyphs
    finally:
        context.close()


def main_thread_tasks(trace: bytes) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of every task the page's main thread (``CrRendererMain``) ran."""
    events = json.loads(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    main = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
    }
    return [
        (e["dur"] / 1000, e.get("tdur", 0) / 1000)
        for e in events
        if e.get("ph") == "X"
        and e.get("name") == "ThreadControllerImpl::RunTask"
        and (e["pid"], e["tid"]) in main
    ]


def render_per_1k(answer: str, trace: list[list[float]]) -> list[float]:
    """Render time spent drawing each successive 1,000 tokens of ``answer``.

    ``trace`` holds ``[characters drawn, render ms so far]`` after every render; a 1k block's cost is
    the render time between the renders that first drew past its start and its end.
    """
    ends = list(itertools.accumulate(len(piece) for piece in split_words(answer)))
    bounds = [ends[i - 1] for i in range(1000, len(ends) + 1, 1000)]
    cumulative = [0.0]
    for bound in bounds:
        cumulative.append(next((ms for shown, ms in trace if shown >= bound), trace[-1][1]))
    return [round(b - a, 1) for a, b in itertools.pairwise(cumulative)]


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| model | run | first glyph | longest long task | long tasks | longest task wall / CPU | "
        "longest render | renders | render total | scripting total | render per 1k tokens (1st → 10th) "
        "| growth |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        longest = "none ≥ 50 ms" if r["longest_task_ms"] is None else f"{r['longest_task_ms']} ms"
        per_1k = " · ".join(f"{v:g}" for v in r["render_ms_per_1k"])
        rows.append(
            f"| {r['model']} | {r['run']} | {r['first_glyph_ms']} ms | {longest} | {r['long_tasks']} | "
            f"{r['task_wall_ms']} / {r['task_cpu_ms']} ms | "
            f"{r['longest_render_ms']} ms | {r['renders']} | {r['render_ms']} ms | {r['scripting_ms']} ms | "
            f"{per_1k} ms | {r['growth']}× |"
        )
    return head + "\n".join(rows) + "\n"


def verdict(results: list[dict[str, Any]]) -> str:
    """One line per target: met in how many runs."""
    n = len(results)
    glyph = sum(r["first_glyph_ms"] < 150 for r in results)
    no_long = sum(r["longest_task_ms"] is None for r in results)
    linear = sum(r["growth"] is not None and r["growth"] < 2 for r in results)
    worst_glyph = max(r["first_glyph_ms"] for r in results)
    worst_task = max((r["longest_task_ms"] or 0) for r in results)
    cpu_ok = sum(r["tasks_over_50ms_cpu"] == 0 for r in results)
    worst_cpu = max(r["task_cpu_ms"] for r in results)
    return (
        f"- first glyph < 150 ms: {glyph} of {n} runs (the slowest: {worst_glyph} ms)\n"
        f"- no long task ≥ 50 ms: {no_long} of {n} runs"
        + (f" (the longest: {worst_task} ms)" if worst_task else "")
        + f"\n- no task over 50 ms of CPU time: {cpu_ok} of {n} runs (the longest: {worst_cpu} ms)"
        + f"\n- scripting linear (the last 1k tokens cost < 2× the first 1k): {linear} of {n} runs\n"
    )


def write_docs(results: list[dict[str, Any]], command: str, environment: str, short_line: str) -> None:
    """Replace (or add) the "## Web page" section of docs/benchmarks.md; other sections stay."""
    body = (
        f"{SECTION}\n\n"
        "A 10,000-token markdown answer (headings, lists, tables, fenced Python) streamed from `echo` into\n"
        "the chat page in headless Chromium. Targets: first glyph under 150 ms after Enter, no long task\n"
        "over 50 ms, scripting linear in tokens (render time per 1k tokens flat, growth about 1×).\n"
        "How each figure is taken: the docstring of `benchmarks/bench_page.py`.\n\n"
        f"```sh\n{command}\n```\n\n"
        f"{environment}\n\n"
        f"{table(results)}\n"
        f"{verdict(results)}\n"
        f"{short_line} In the table the question is the whole 10,000-token answer (`echo` streams the\n"
        "question back), so Enter-to-glyph there also covers sending and showing a 50 KB question.\n"
        '"Longest task wall / CPU" comes from a Chromium trace of the page\'s main thread: on a shared\n'
        "machine a task's wall time includes waiting for a core, its CPU time is the page's own work.\n"
    )
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    match = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[: match.start()] + body + ("\n" if match.end() < len(text) else "") + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--delays", default="0,5", help="ms per token, comma-separated (0 and/or 5)")
    parser.add_argument(
        "--cpu-throttle", type=float, default=1.0, help="CDP CPU throttling rate (4 = slow laptop)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per delay (one table row each)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    models = {"0": "echo", "5": "echo-5ms"}
    answer = markdown_answer(args.tokens)
    results = []
    with tempfile.TemporaryDirectory() as data_dir, serve(data_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        version = browser.version
        try:
            for delay in args.delays.split(","):
                for run in range(1, args.runs + 1):
                    model = models[delay.strip()]
                    result = {
                        "run": run,
                        **run_once(browser, url, model, answer, args.tokens, args.cpu_throttle),
                    }
                    results.append(result)
                    print(json.dumps(result), flush=True)
            short = short_question_glyphs(browser, url)
        finally:
            browser.close()
    print()
    print(table(results))
    print(verdict(results))
    short_line = (
        f"First glyph for a short question (5 in a row, `echo`): {' · '.join(f'{g:g}' for g in short)} ms."
    )
    print(short_line)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    environment = (
        f"Chromium {version} headless, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, CPU throttling {args.cpu_throttle:g}×, load average at the end {load}."
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": environment, "results": results}, indent=2))
    if args.write_docs:
        throttle = f" --cpu-throttle {args.cpu_throttle:g}" if args.cpu_throttle != 1 else ""
        command = (
            f".venv/bin/python benchmarks/bench_page.py --tokens {args.tokens} --delays {args.delays}"
            f" --runs {args.runs}{throttle} --write-docs"
        )
        write_docs(results, command, environment, short_line)
        print(f"wrote the {SECTION!r} section of {DOCS}")


if __name__ == "__main__":
    main()
