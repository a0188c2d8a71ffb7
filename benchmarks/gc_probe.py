"""What the garbage collector costs inside ``sluiceway serve`` under the relay benchmark's load.

What runs: :mod:`mock_upstream`, then ``sluiceway serve`` (the relay benchmark's configuration) in a
process of its own started through this file's ``--serve`` mode, which times every collection with
``gc.callbacks`` and writes the running totals to a JSON file every 0.2 s; then :mod:`loadgen`
rounds against it. Each round prints the collector's time by generation during the round, its
longest pause, the server's RSS after it and the load generator's figures. Loopback only; every round
is bounded in time.

``--retention-s`` sets how long finished answers are kept for resume (the benchmark's 10 s by
default; the server's default is 600 s, where retained logs pile up round after round).
``--gc-threshold 700,10,10`` replaces the thresholds ``sluiceway serve`` sets once it has started.

Run: ``.venv/bin/python benchmarks/gc_probe.py --rounds max16,cadence256`` or ``--help``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from relay import PYTHON, free_port, process, rss_kb, wait_http  # noqa: E402

ROUNDS = {
    "max16": ("fast", 256, 16, 4.0),  # model, tokens, concurrency, seconds
    "cadence256": ("cadence", 64, 256, 4.0),
}


def serve(stats_path: Path, threshold: str | None, argv: list[str]) -> int:
    """``sluiceway serve`` in this process, its collections timed."""
    totals = {str(g): {"rounds": 0, "ms": 0.0} for g in range(3)}
    pauses: list[tuple[float, int, float]] = []  # (wall time, generation, ms) of rounds >= 5 ms
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        entry = totals[str(info["generation"])]
        entry["rounds"] += 1
        entry["ms"] += ms
        if ms >= 5:
            pauses.append((time.time(), info["generation"], round(ms, 1)))

    def dump() -> None:
        while True:
            time.sleep(0.2)
            tmp = stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"totals": totals, "pauses": pauses, "threshold": gc.get_threshold()}))
            tmp.replace(stats_path)

    gc.callbacks.append(timed)
    threading.Thread(target=dump, daemon=True).start()
    if threshold:
        from sluiceway.cli import serve as serve_cli

        serve_cli.GC_THRESHOLD = tuple(int(x) for x in threshold.split(","))  # type: ignore[assignment]
    from sluiceway.cli.main import main

    return main(argv)


def read_stats(path: Path) -> dict[str, Any]:
    time.sleep(0.5)  # the server writes every 0.2 s
    stats: dict[str, Any] = json.loads(path.read_text())
    return stats


def config(tmp: Path, mock: str, retention_s: float) -> Path:
    path = tmp / "sluiceway.toml"
    models = "".join(
        f'[models.{name}]\nprovider = "openai"\nmodel = "{upstream}"\nbase_url = "{mock}/v1"\n'
        for name, upstream in (("fast", "mock-d0"), ("cadence", "mock-d20"))
    )
    head = f'default_model = "fast"\nretention_s = {retention_s}\ndata_dir = "{tmp}"\n'
    path.write_text(head + '[models.local]\nprovider = "echo"\n' + models)  # no embedded model in memory
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", default="max16,cadence256", help=f"comma-separated: {', '.join(ROUNDS)}")
    parser.add_argument("--repeat", type=int, default=1, help="run the list of rounds this many times")
    parser.add_argument("--retention-s", type=float, default=10.0)
    parser.add_argument("--gc-threshold", help="e.g. 700,10,10 (default: what sluiceway serve sets)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the server mode: stats file
    args, rest = parser.parse_known_args()
    if args.serve:
        return serve(args.serve, args.gc_threshold, rest)
    names = args.rounds.split(",") * args.repeat
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluiceway-gc-")))
        mock_port, port = free_port(), free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        mock = stack.enter_context(
            process([PYTHON, str(HERE / "mock_upstream.py"), "--port", str(mock_port)], tmp / "mock.log")
        )
        wait_http(f"{mock_url}/stats", mock, 30)
        stats_path = tmp / "gc.json"
        cmd = [PYTHON, __file__, "--serve", str(stats_path)]
        cmd += ["--gc-threshold", args.gc_threshold] if args.gc_threshold else []
        cmd += ["serve", "--config", str(config(tmp, mock_url, args.retention_s)), "--port", str(port)]
        server = stack.enter_context(process(cmd, tmp / "sluiceway.log", dict(os.environ)))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", server, 60)
        before = read_stats(stats_path)
        print(f"threshold {before['threshold']}; start-up: {summary(before, None, 0.0)}", flush=True)
        for number, name in enumerate(names, 1):
            start = time.time()
            model, tokens, concurrency, seconds = ROUNDS[name]
            load = [PYTHON, str(HERE / "loadgen.py"), "--url", url, "--model", model, "--tokens", str(tokens)]
            load += ["--concurrency", str(concurrency), "--duration", str(seconds), "--max-seconds", "60"]
            run = json.loads(subprocess.run(load, check=True, capture_output=True).stdout)
            after = read_stats(stats_path)
            print(
                f"round {number} {name}: {run['tokens_per_s']:,.0f} tokens/s, "
                f"TTFT p99 {run['ttft_p99_ms']:.0f} ms, "
                f"ITL p99 {run['itl_p99_ms']:.1f} ms, errors {sum(run['errors'].values())}; "
                f"GC {summary(after, before, start)}; RSS {rss_kb(server.pid) / 1024:.0f} MB",
                flush=True,
            )
            before = after
    return 0


def summary(stats: dict[str, Any], before: dict[str, Any] | None, since: float) -> str:
    """The collector's rounds and time by generation since ``before``, and its longest pause since
    ``since`` (wall time)."""
    parts = []
    for gen in "012":
        now = stats["totals"][gen]
        then = before["totals"][gen] if before else {"rounds": 0, "ms": 0.0}
        parts.append(f"gen{gen} {now['rounds'] - then['rounds']}x {now['ms'] - then['ms']:.0f} ms")
    longest = max((ms for at, _, ms in stats["pauses"] if at >= since), default=0.0)
    return ", ".join(parts) + f", longest pause {longest:.0f} ms"


if __name__ == "__main__":
    raise SystemExit(main())
