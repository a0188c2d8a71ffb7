"""Time to first token and tokens/s of the embedded model, path by path.

Every path runs the same loaded model on the same prompt with the same sampling (greedy, the
provider's repeat penalty) and the same ``max_tokens``; the KV cache is cleared before every run,
so each run evaluates the whole prompt. Paths take turns, run by run, so drift hits them all alike.

Paths (add one by writing an ``async def`` taking a :class:`Bench` and listing it in ``PATHS``):

* ``llama_cpp.generate``: tokenize + ``Llama.generate`` + per-token detokenize: the floor.
* ``llama_cpp.chat``: ``Llama.create_chat_completion(stream=True)``, the library's high-level API.
* ``provider.stream``: :class:`~sluiceway.providers.local.LocalProvider` (worker thread, queue).
* ``server.http``: the same provider behind a real uvicorn running ``create_app``, read by an httpx
  client as ``POST /chat/stream`` SSE over loopback: the whole gateway.

Definitions: ``ttft_ms`` from the call to the first text; ``decode_tok_s`` = (tokens - 1) / (end -
first text); ``e2e_tok_s`` = tokens / (end - call). Medians over ``--runs``.

Run: ``.venv/bin/python benchmarks/bench_local.py [--runs 5] [--max-tokens 128] [--json FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluiceway.events import TextDelta, Usage
from sluiceway.providers.local import LocalProvider, LocalSettings
from sluiceway.requests import ChatRequest, Message, make_request

PROMPT = "Write a long story about a dragon who guards a library."


@dataclass(frozen=True, slots=True)
class Run:
    """One generation's timings, in seconds from the call."""

    first_text_s: float
    end_s: float
    output_tokens: int

    @property
    def ttft_ms(self) -> float:
        return self.first_text_s * 1000

    @property
    def decode_tok_s(self) -> float:
        return (self.output_tokens - 1) / max(self.end_s - self.first_text_s, 1e-9)

    @property
    def e2e_tok_s(self) -> float:
        return self.output_tokens / self.end_s


@dataclass(frozen=True, slots=True)
class Bench:
    """What every path shares: one model, one provider over it, one request."""

    llm: Any
    provider: LocalProvider
    request: ChatRequest
    max_tokens: int
    server: GatewayServer | None = None

    @property
    def settings(self) -> LocalSettings:
        return self.provider.settings

    def sampling(self) -> dict[str, Any]:
        s = self.settings
        return {
            "temp": 0.0,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "repeat_penalty": s.repeat_penalty,
        }


async def llama_generate(bench: Bench) -> Run:
    """llama-cpp-python's token loop, with nothing of sluiceway in the timed part."""
    llm, prompt_text = bench.llm, bench.provider.format_prompt(bench.request)
    llm.reset()
    start = time.perf_counter()
    prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    first, produced, eos = 0.0, 0, llm.token_eos()
    for token in llm.generate(prompt, **bench.sampling()):
        produced += 1
        if token == eos:
            break
        if llm.detokenize([token]) and not first:
            first = time.perf_counter() - start
        if produced == bench.max_tokens:
            break
    return Run(first, time.perf_counter() - start, produced)


async def llama_chat(bench: Bench) -> Run:
    """llama-cpp-python's OpenAI-style streaming chat API (output tokens counted by re-tokenizing)."""
    llm, s = bench.llm, bench.sampling()
    messages: list[Any] = [{"role": m.role, "content": m.content} for m in bench.request.messages]
    llm.reset()
    start = time.perf_counter()
    first, text, finish = 0.0, "", None
    chunks = llm.create_chat_completion(
        messages=messages,
        stream=True,
        max_tokens=bench.max_tokens,
        temperature=s["temp"],
        top_k=s["top_k"],
        top_p=s["top_p"],
        min_p=s["min_p"],
        repeat_penalty=s["repeat_penalty"],
    )
    for chunk in chunks:
        choice = chunk["choices"][0]
        piece = choice["delta"].get("content") or ""
        if piece and not first:
            first = time.perf_counter() - start
        text += piece
        finish = choice["finish_reason"] or finish
    end = time.perf_counter() - start
    produced = len(llm.tokenize(text.encode(), add_bos=False)) + (finish == "stop")
    return Run(first, end, produced)


async def provider_stream(bench: Bench) -> Run:
    """sluiceway's local provider: worker thread, cancel checks, UTF-8 buffering, events."""
    bench.llm.reset()
    start = time.perf_counter()
    first, produced = 0.0, 0
    async for event in bench.provider.stream(bench.request):
        if isinstance(event, TextDelta) and not first:
            first = time.perf_counter() - start
        elif isinstance(event, Usage):
            produced = event.output_tokens
    return Run(first, time.perf_counter() - start, produced)


class GatewayServer:
    """``create_app`` under real uvicorn in a thread, serving ``bench.provider`` as ``local``."""

    def __init__(self, provider: LocalProvider) -> None:
        import uvicorn

        from sluiceway.providers.registry import ProviderRegistry
        from sluiceway.server.app import create_app
        from sluiceway.server.settings import load_settings

        registry = ProviderRegistry()
        registry.register("local", lambda config: provider)
        registry.register("echo", lambda config: provider)
        settings = load_settings(None, env={}, overrides={"default_model": "local"})
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        app = create_app(settings, registry)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.url = f"http://127.0.0.1:{port}/chat/stream"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def server_http(bench: Bench) -> Run:
    """The whole gateway: HTTP in, relay, seed SSE out, parsed by a client over loopback."""
    import httpx

    from sluiceway.wire.sse import SSEDecoder

    assert bench.server is not None
    bench.llm.reset()
    body = {"message": PROMPT, "max_tokens": bench.max_tokens, "temperature": 0}
    decoder = SSEDecoder()
    start = time.perf_counter()
    first, produced = 0.0, 0
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream("POST", bench.server.url, json=body) as response,
    ):
        async for raw in response.aiter_raw():
            for event in decoder.feed(raw):
                if event.data == "[DONE]":
                    continue
                data = json.loads(event.data)
                if data["type"] == "chunk" and not first:
                    first = time.perf_counter() - start
                elif data["type"] == "done":
                    produced = data["usage"]["output_tokens"]
    return Run(first, time.perf_counter() - start, produced)


PathFn = Callable[[Bench], Awaitable[Run]]
PATHS: dict[str, PathFn] = {
    "llama_cpp.generate": llama_generate,
    "llama_cpp.chat": llama_chat,
    "provider.stream": provider_stream,
    "server.http": server_http,
}


def summarize(runs: list[Run]) -> dict[str, float]:
    """Medians of one path's runs, and the best run (least disturbed by other load)."""
    return {
        "ttft_ms": round(statistics.median(r.ttft_ms for r in runs), 1),
        "best_ttft_ms": round(min(r.ttft_ms for r in runs), 1),
        "decode_tok_s": round(statistics.median(r.decode_tok_s for r in runs), 1),
        "best_decode_tok_s": round(max(r.decode_tok_s for r in runs), 1),
        "e2e_tok_s": round(statistics.median(r.e2e_tok_s for r in runs), 1),
        "output_tokens": statistics.median(r.output_tokens for r in runs),
    }


COLUMNS = ("ttft_ms", "best_ttft_ms", "decode_tok_s", "best_decode_tok_s", "e2e_tok_s", "output_tokens")


def table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of the summaries."""
    lines = ["path".ljust(20) + "".join(c.rjust(len(c) + 2) for c in COLUMNS)]
    for name, row in results.items():
        lines.append(name.ljust(20) + "".join(f"{row[c]:.1f}".rjust(len(c) + 2) for c in COLUMNS))
    return "\n".join(lines)


def load(settings: LocalSettings) -> Any:
    """The model, loaded directly with llama-cpp-python as a user of the library would."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(settings.resolved_model_path()),
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_batch,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads,
        seed=0,
        verbose=False,
    )


async def run(runs: int, max_tokens: int, paths: list[str], threads: int | None) -> dict[str, Any]:
    """Warm every path once, then take turns for ``runs`` rounds."""
    settings = LocalSettings() if threads is None else LocalSettings(n_threads=threads)
    llm = load(settings)
    provider = LocalProvider(llm, settings)
    request = make_request([Message("user", PROMPT)], "local", max_tokens=max_tokens, temperature=0)
    server = GatewayServer(provider) if "server.http" in paths else None
    bench = Bench(llm, provider, request, max_tokens, server)
    prompt_tokens = len(provider.encode(request))
    timings: dict[str, list[Run]] = {name: [] for name in paths}
    try:
        if server is not None:
            server.__enter__()
        for name in paths:
            await PATHS[name](bench)
        for _ in range(runs):
            for name in paths:
                timings[name].append(await PATHS[name](bench))
    finally:
        if server is not None:
            server.__exit__()
        await provider.aclose()
    return {
        "model": Path(llm.model_path).name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {settings.n_threads} llama.cpp threads",
        "load_average": os.getloadavg()[0],
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "runs": runs,
        "settings": {"n_ctx": settings.n_ctx, "n_batch": settings.n_batch, **bench.sampling()},
        "paths": {name: summarize(found) for name, found in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: the provider's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args.runs, args.max_tokens, args.paths, args.threads))
    print(table(results["paths"]))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
