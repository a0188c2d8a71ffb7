"""Memory per open stream: the RSS a server adds for every stream it holds open, measured as a slope.

The relay benchmark's "KB/stream" is the RSS rise over the RSS before a scenario, divided by the
streams open at once; memory freed by the scenarios before it is reused first, so that figure moves
with what ran before. Here nothing else runs: each server (sluiceway relaying the mock through the
``openai`` provider, and the HTTP and SDK floors of :mod:`http_floor` for comparison) gets a warm-up
of ``--low`` streams, then ``--low`` and ``--high`` streams are opened and held (the mock waits 2 s
between tokens, so they stay open and quiet), and the RSS is read once all of them have their first
token; after each hold the script waits until the ended streams are no longer retained. The rise
from idle to ``--high`` streams, per stream, and the slope between the two counts (what one more
open stream costs once the first ones have been paid for) are printed.

All on loopback; every load is bounded (``--per-worker 1``, a time limit).

Run: ``.venv/bin/python benchmarks/open_streams.py [--low 256 --high 1000 --reps 5 --targets sluiceway]``;
each repetition starts every server afresh (the RSS a burst of streams leaves depends on how the
requests of the burst interleave: single runs of the same code vary by a third).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from relay import HERE, PYTHON, free_port, process, rss_kb, wait_http

QUIET_MODEL = "mock-d2000"  # 2 s between tokens: the streams stay open and idle
TOKENS = 4  # a stream lasts ≈ 8 s
SETTLE_S = 5.0  # the first token comes 2 s after a stream opens; 1,000 openings take ≈ 1-2 s more
PAUSE_S = 11.0  # between two holds: the server retains ended streams 10 s (retention_s), trims every 10 s


def hold(url: str, model: str, streams: int, pid: int) -> int:
    """RSS (KB) of ``pid`` once ``streams`` streams of ``model`` are open, then wait for them to end."""
    cmd = [PYTHON, str(HERE / "loadgen.py"), "--url", url, "--model", model, "--tokens", str(TOKENS)]
    cmd += ["--concurrency", str(streams), "--per-worker", "1", "--max-seconds", "60"]
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(SETTLE_S)
    rss = rss_kb(pid)
    out, err = load.communicate(timeout=90)
    if load.returncode != 0 or b'"errors": {}' not in out:
        raise RuntimeError(f"loadgen against {url}: {out.decode()[-500:]} {err.decode()[-500:]}")
    time.sleep(PAUSE_S)
    return rss


TARGETS = ("http-floor", "sdk-floor", "sluiceway")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--low", type=int, default=256)
    parser.add_argument("--high", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=1, help="fresh servers each time; medians printed last")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="a comma-separated subset of " + ", ".join(TARGETS)
    )
    args = parser.parse_args()
    names = [name for name in args.targets.split(",") if name in TARGETS]
    head = f"| target | RSS idle MB | RSS at {args.low} open MB | RSS at {args.high} open MB "
    print(head + "| KB per open stream (idle → high) | KB per extra stream (low → high) |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    rows: dict[str, list[list[float]]] = {name: [] for name in names}
    for _ in range(args.reps):
        for name in names:
            cells = measure(name, args.low, args.high)
            rows[name].append(cells)
            print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
    if args.reps > 1:
        for name in names:
            medians = [statistics.median(column) for column in zip(*rows[name], strict=True)]
            print(f"| {name}, median of {args.reps} | " + " | ".join(f"{c:.1f}" for c in medians) + " |")
    return 0


def measure(name: str, low: int, high: int) -> list[float]:
    """Start the mock and the ``name`` server afresh, hold ``low`` then ``high`` streams; the row's cells."""
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mock_port = free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        cmd = [PYTHON, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
        mock = stack.enter_context(process(cmd, tmp / "mock.log"))
        wait_http(f"{mock_url}/stats", mock, 30)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "sluiceway":
            config = tmp / "sluiceway.toml"
            config.write_text(
                f'default_model = "quiet"\ndisconnect_grace_s = 0\nretention_s = 10\ndata_dir = "{tmp}"\n'
                '[models.local]\nprovider = "echo"\n'  # no embedded model, as in the relay benchmark
                f'[models.quiet]\nprovider = "openai"\nmodel = "{QUIET_MODEL}"\nbase_url = "{mock_url}/v1"\n'
            )
            cmd = [PYTHON, "-m", "sluiceway", "serve", "--config", str(config), "--port", str(port)]
            proc = stack.enter_context(process(cmd, tmp / "sluiceway.log"))
            wait_http(f"{url}/healthz", proc, 60)
            model = "quiet"
        else:
            extra = ["--sdk"] if name == "sdk-floor" else []
            cmd = [PYTHON, str(HERE / "http_floor.py"), "--port", str(port), "--upstream", mock_url, *extra]
            proc = stack.enter_context(process(cmd, tmp / f"{name}.log"))
            wait_http(f"{url}/stats", proc, 30)
            model = QUIET_MODEL
        hold(url, model, low, proc.pid)  # warm-up: imports, pools, first-request paths
        idle = rss_kb(proc.pid)
        at_low = hold(url, model, low, proc.pid)
        at_high = hold(url, model, high, proc.pid)
        return [
            idle / 1024,
            at_low / 1024,
            at_high / 1024,
            (at_high - idle) / high,
            (at_high - at_low) / (high - low),
        ]


if __name__ == "__main__":
    sys.exit(main())
