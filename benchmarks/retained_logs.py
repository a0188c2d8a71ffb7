"""What finished streams cost while they are kept for resume: bytes and collector-tracked objects,
and how long a full collection takes with them.

1. ``--logs`` finished :class:`~sluiceway.streams.log.MemoryStreamLog` s of ``--tokens`` text deltas
   each (a new string per token, as a provider parses them), measured with ``tracemalloc``.
2. ``--streams`` answers of the ``echo`` provider run through a :class:`~sluiceway.streams.hub.StreamHub`
   and read to their end, kept as they are (``retire_after_s`` past the retention) and retired.

In-process, no I/O. Run: ``.venv/bin/python benchmarks/retained_logs.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import tracemalloc

from sluiceway.events import Finish, TextDelta, Usage
from sluiceway.providers.echo import EchoProvider
from sluiceway.requests import ChatRequest, Message
from sluiceway.streams.hub import HubSettings, StreamHub
from sluiceway.streams.log import MemoryStreamLog

WORDS = [" the", " stream", " token", " of", " a", " model", " answer", ",", ".", " gateway"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--logs", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--streams", type=int, default=20_000)
    args = parser.parse_args()
    logs_alone(args)
    for retire_after_s in (1e9, 0.0):
        asyncio.run(hub_streams(args.streams, retire_after_s))
    return 0


async def hub_streams(count: int, retire_after_s: float) -> None:
    hub = StreamHub(HubSettings(retention_s=1e6, retire_after_s=retire_after_s))
    provider = EchoProvider()
    question = ChatRequest((Message("user", " ".join(WORDS * 6)),), "echo")  # 60 pieces
    gc.collect()
    objects = len(gc.get_objects())
    for _ in range(count):
        stream = hub.start(provider, question)
        async for _batch in stream.read():
            pass
    del stream
    await asyncio.sleep(0.05)  # the retirements are due
    gc.collect()
    tracked = len(gc.get_objects()) - objects
    started = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - started) * 1000
    how = "kept as they ran" if retire_after_s else "retired"
    print(f"{count:,} finished answers {how}: {tracked / count:.1f} tracked objects each;", end=" ")
    print(f"a full collection {full_ms:.1f} ms")
    await hub.aclose()


def logs_alone(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    tracemalloc.start()
    gc.collect()
    objects, base = len(gc.get_objects()), tracemalloc.get_traced_memory()[0]
    logs = []
    for n in range(args.logs):
        log = MemoryStreamLog(f"s{n}")
        log.append_nowait(Usage(10, 0))
        for i in range(args.tokens):
            log.append_nowait(TextDelta(rng.choice(WORDS) + str(i % 7)))
        log.append_nowait(Usage(10, args.tokens))
        log.append_nowait(Finish("stop"))
        logs.append(log)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracked = len(gc.get_objects()) - objects
    tracemalloc.stop()
    started = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - started) * 1000
    tokens = args.logs * args.tokens
    print(f"{args.logs} finished logs of {args.tokens} tokens: {used / tokens:.1f} bytes a token;")
    print(f"{tracked:,} more objects tracked by the collector; a full collection {full_ms:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
