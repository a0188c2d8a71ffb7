"""The ``local`` provider: pure helpers by table, then the embedded SmolLM2 model for real.

One model is loaded for the whole module. Tests that cross the worker thread wait on the provider's
counters (``tokens_generated``, ``prompt_tokens_evaluated``, ``queued``) with ``wait_until``, which
polls a condition under a deadline; nothing waits a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from sluiceway.errors import InvalidRequestError, UpstreamUnavailableError
from sluiceway.events import Event, Finish, TextDelta, Usage
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.local import (
    LocalProvider,
    LocalSettings,
    ModelFileError,
    StopMatcher,
    Utf8Decoder,
    create,
    default_model_path,
    reusable_prefix,
)
from sluiceway.requests import ChatRequest, Message, make_request

MULTIBYTE = "naïve café 東京 🚀👍🏽"


def ask(text: str, **limits: Any) -> ChatRequest:
    return make_request([Message("user", text)], "smol", **limits)


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a condition the worker thread makes true: it has no asyncio event to await."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the condition changes on another thread
            await asyncio.sleep(0.001)


# ---- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"abc"], ["abc"]),
        ([b"\xc3", b"\xa9"], ["", "é"]),
        ([b"caf\xc3", b"\xa9!"], ["caf", "é!"]),
        ([b"\xe6", b"\x9d", b"\xb1"], ["", "", "東"]),
        ([b"\xf0\x9f", b"\x9a", b"\x80"], ["", "", "🚀"]),
        ([b"\xf0", b"\x9f\x9a\x80\xf0\x9f", b"\x91\x8d"], ["", "🚀", "👍"]),
        ([b"a\xff", b"b"], ["a\ufffd", "b"]),
        ([b"ok\xe6\x9d"], ["ok"]),  # cut off mid-character: held, then dropped at the end
    ],
)
def test_utf8_decoder_holds_back_split_characters(pieces: list[bytes], expected: list[str]) -> None:
    decoder = Utf8Decoder()
    assert [decoder.feed(piece) for piece in pieces] == expected


def test_utf8_decoder_survives_every_split_point() -> None:
    data = MULTIBYTE.encode()
    for cut in range(len(data) + 1):
        decoder = Utf8Decoder()
        out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert out == MULTIBYTE, cut


@pytest.mark.parametrize(
    ("stops", "pieces", "shown", "matched"),
    [
        ((), ["a", "b"], ["a", "b"], None),
        (("END",), ["hello ", "world"], ["hello ", "world"], None),
        (("END",), ["ab", "E", "N", "D", "x"], ["ab", "", "", ""], "END"),
        (("END",), ["abE", "Nope"], ["ab", "ENope"], None),
        (("END",), ["xxENDyy"], ["xx"], "END"),
        (("\n\n", "##"), ["a\n", "#", "#b"], ["a", "\n", ""], "##"),
        (("##", "#x"), ["q#", "x"], ["q", ""], "#x"),
        (("b", "ab", "abc"), ["xabcd"], ["x"], "ab"),  # the earliest place, then the shorter
        (("",), ["a"], ["a"], None),
    ],
)
def test_stop_matcher_cuts_at_first_stop_and_names_it(
    stops: tuple[str, ...], pieces: list[str], shown: list[str], matched: str | None
) -> None:
    matcher = StopMatcher(stops)
    results = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        results.append(text)
        if hit is not None:
            break
    assert results == shown
    assert hit == matched


def test_stop_matcher_flush_releases_held_text() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("to ST") == ("to ", None)
    assert matcher.flush() == "ST"


@pytest.mark.parametrize(
    ("cached", "prompt", "keep"),
    [
        ([], [1, 2, 3], 0),
        ([1, 2, 3], [1, 2, 3], 2),  # fully cached: the last token is evaluated again
        ([1, 2, 3, 9, 9], [1, 2, 3, 4], 3),
        ([1, 2], [1, 2, 3, 4], 2),
        ([5, 2, 3], [1, 2, 3], 0),
        ([1], [1], 0),
    ],
)
def test_reusable_prefix(cached: list[int], prompt: list[int], keep: int) -> None:
    assert reusable_prefix(cached, prompt) == keep


def test_settings_read_options_and_gguf_model() -> None:
    config = ModelConfig(
        "smol", "local", model="~/models/x.gguf", options={"n_ctx": 1024, "temperature": 0, "seed": 0}
    )
    settings = LocalSettings.from_config(config)
    assert settings.model_path == Path("~/models/x.gguf").expanduser()
    assert (settings.n_ctx, settings.temperature, settings.seed, settings.n_batch) == (1024, 0.0, 0, 32)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_ctx": 0}, "models.smol.n_ctx: must be a whole number >= 1, got 0"),
        ({"n_batch": "64"}, "models.smol.n_batch"),
        ({"temperature": -1}, "models.smol.temperature"),
        ({"temperature": True}, "models.smol.temperature: must be a number"),
        ({"model_path": 3}, "models.smol.model_path: must be a path"),
        ({"ctx": 1}, "models.smol.ctx: unknown option for provider 'local'"),
    ],
)
def test_settings_reject_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LocalSettings.from_config(ModelConfig("smol", "local", options=options))


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "files", not_installed)
    with pytest.raises(ModelFileError, match=r"sluiceway\[local\]"):
        default_model_path()


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    settings = LocalSettings(model_path=tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match=r"nope\.gguf"):
        settings.resolved_model_path()


# ---- the embedded model -------------------------------------------------------------------------

local = pytest.mark.local


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    loaded = LocalProvider.load(LocalSettings(seed=7))
    yield loaded
    asyncio.run(loaded.aclose())


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[Any]:
    """The model's own tokenizer, loaded apart from the provider (vocabulary only)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    yield vocab
    vocab.close()


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.tokenize(text.encode(), add_bos=False, special=True))


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


async def next_event(stream: AsyncIterator[Event]) -> Event:
    return await anext(stream)


@local
def test_default_model_is_the_packaged_smollm2() -> None:
    path = default_model_path()
    assert path.suffix == ".gguf"
    assert "SmolLM2-135M-Instruct" in path.name


@local
def test_factory_builds_a_provider_from_model_path() -> None:
    config = ModelConfig("smol", "local", options={"model_path": str(default_model_path()), "n_ctx": 512})
    built = create(config)
    try:
        assert isinstance(built, Provider)
        assert isinstance(built, LocalProvider)
        assert built.n_ctx == 512
    finally:
        asyncio.run(built.aclose())


@local
def test_unloadable_model_file_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ModelFileError, match=r"cannot load model .*broken\.gguf"):
        LocalProvider.load(LocalSettings(model_path=broken))


@local
def test_prompt_uses_the_models_chat_template(provider: LocalProvider) -> None:
    request = make_request([Message("system", "Be brief."), Message("user", "Hi!")], "smol")
    assert provider.format_prompt(request) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


@local
async def test_generates_a_short_answer(provider: LocalProvider, tokenizer: Any) -> None:
    request = ask("What is the capital of France? Answer in one sentence.", max_tokens=32, temperature=0)
    before = provider.tokens_generated
    events = await collect(provider.stream(request))

    prompt_tokens = count_tokens(tokenizer, provider.format_prompt(request))
    answer = texts(events)
    produced = provider.tokens_generated - before
    assert events[0] == Usage(prompt_tokens, 0)
    assert all(isinstance(e, TextDelta) and e.text for e in events[1:-2])
    assert "Paris" in answer
    assert events[-2:] == [Usage(prompt_tokens, produced), Finish("stop")]
    assert produced == count_tokens(tokenizer, answer) + 1  # the answer's tokens and <|im_end|>


@local
async def test_max_tokens_finishes_with_length(provider: LocalProvider) -> None:
    events = await collect(provider.stream(ask("Write a long story about a dragon.", max_tokens=5)))
    assert isinstance(events[-2], Usage)
    assert events[-2].output_tokens == 5
    assert events[-1] == Finish("length")


@local
async def test_stop_string_ends_the_answer_before_it_and_is_named(provider: LocalProvider) -> None:
    request = ask(
        "Count from 1 to 10, separated by commas.", max_tokens=40, temperature=0, stop=[", 4", "11"]
    )
    events = await collect(provider.stream(request))
    assert texts(events) == "1, 2, 3"
    assert events[-1] == Finish("stop", stop_sequence=", 4")


@local
async def test_prompt_longer_than_context_is_rejected(provider: LocalProvider) -> None:
    stream = provider.stream(ask("word " * 3000))
    with pytest.raises(InvalidRequestError, match="context holds 2048"):
        await anext(stream)


@local
@pytest.mark.parametrize("how", ["cancel the task", "aclose the stream"])
async def test_cancel_during_generation_stops_within_one_token(provider: LocalProvider, how: str) -> None:
    stream = provider.stream(ask("Write a long story about a dragon.", max_tokens=400))
    five_seen = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 5:
                five_seen.set()
                if how == "aclose the stream":
                    return

    task = asyncio.create_task(consume())
    await five_seen.wait()
    before = provider.tokens_generated
    if how == "cancel the task":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await task
        before = provider.tokens_generated
        await stream.aclose()
    after = provider.tokens_generated
    assert after - before <= 1
    assert provider.queued == 0
    assert provider.tokens_generated == after  # the worker has stopped for good


@local
async def test_cancel_during_prompt_evaluation(provider: LocalProvider) -> None:
    request = ask(
        "Summarise these notes. " + " ".join(f"note {i} is about topic {i * 7}." for i in range(125))
    )
    prompt_tokens = len(provider.encode(request))
    assert 1400 < prompt_tokens < provider.n_ctx
    tokens_before, evaluated_before = provider.tokens_generated, provider.prompt_tokens_evaluated

    task = asyncio.create_task(collect(provider.stream(request)))
    await wait_until(lambda: provider.prompt_tokens_evaluated > evaluated_before or task.done())
    evaluated_at_cancel = provider.prompt_tokens_evaluated - evaluated_before
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    took = time.perf_counter() - started

    evaluated = provider.prompt_tokens_evaluated - evaluated_before
    assert evaluated <= evaluated_at_cancel + 2 * provider.settings.n_batch  # stopped at a batch edge
    assert took < 5.0  # one batch; on a shared CI machine a batch can take seconds
    assert evaluated < prompt_tokens
    assert provider.tokens_generated == tokens_before


@local
async def test_cancel_while_queued_behind_another_generation(provider: LocalProvider) -> None:
    tokens_before = provider.tokens_generated
    first = provider.stream(ask("Write a long story about a dragon.", max_tokens=120))
    assert isinstance(await anext(first), Usage)
    assert isinstance(await anext(first), TextDelta)  # the first stream now holds the model

    second = provider.stream(ask("What is two plus two?"))
    assert isinstance(await anext(second), Usage)
    waiting = asyncio.create_task(next_event(second))
    await wait_until(lambda: provider.queued == 1 or waiting.done())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert provider.queued == 0

    rest = await collect(first)
    usage = rest[-2]
    assert isinstance(usage, Usage)
    assert isinstance(rest[-1], Finish)
    assert provider.tokens_generated - tokens_before == usage.output_tokens  # the queued one never ran


@local
async def test_event_loop_keeps_ticking_during_generation(provider: LocalProvider) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    notes = " ".join(f"fact {i}: the {i}th lamp is green." for i in range(30))
    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    events = await collect(provider.stream(ask(f"Which lamps are green? {notes}", max_tokens=40)))
    elapsed = time.perf_counter() - started
    done.set()
    await ticking
    assert isinstance(events[-1], Finish)
    assert isinstance(events[0], Usage) and events[0].input_tokens > 300
    # Work done on the loop would show as one gap about as long as the prompt's evaluation.
    assert max(gaps) < elapsed / 4
    assert len(gaps) > 0.3 * elapsed / 0.01


@local
def test_real_tokens_decode_incrementally_without_replacement_characters(tokenizer: Any) -> None:
    decoder = Utf8Decoder()
    pieces = [decoder.feed(tokenizer.detokenize([t])) for t in tokenizer.tokenize(MULTIBYTE.encode())]
    assert "" in pieces  # the tokenizer really does split characters across tokens
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == MULTIBYTE


@local
async def test_aclose_ends_running_streams_and_refuses_new_ones() -> None:
    own = LocalProvider.load(LocalSettings(n_ctx=512))
    stream = own.stream(ask("Write a long story about a dragon.", max_tokens=400))
    assert isinstance(await anext(stream), Usage)
    assert isinstance(await anext(stream), TextDelta)

    await own.aclose()
    rest = await collect(stream)
    assert rest[-1] == Finish("cancelled")
    await own.aclose()  # idempotent
    with pytest.raises(UpstreamUnavailableError):
        await anext(own.stream(ask("Hello")))
