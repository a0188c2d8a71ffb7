"""What a finished stream's log costs while it is kept for resume: bytes and collector-tracked
objects per retained token, and how long a full collection takes with them.

Builds ``--logs`` finished :class:`~sluiceway.streams.log.MemoryStreamLog` s of ``--tokens`` text
deltas each (a new string per token, as a provider parses them), measured with ``tracemalloc``.
In-process, no I/O. Run: ``.venv/bin/python benchmarks/retained_logs.py``.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from sluiceway.events import Finish, TextDelta, Usage
from sluiceway.streams.log import MemoryStreamLog

WORDS = [" the", " stream", " token", " of", " a", " model", " answer", ",", ".", " gateway"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--logs", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
