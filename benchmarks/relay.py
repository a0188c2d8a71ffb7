"""Side by side, in one run: the mock upstream read directly, sluiceway relaying it, LiteLLM relaying it.

What runs: :mod:`mock_upstream` (raw asyncio, pre-encoded frames), ``sluiceway serve`` in its own
process with two ``openai``-provider models pointing at the mock (``fast``: no delay, ``cadence``:
20 ms between tokens), LiteLLM's proxy (its own venv, 1 worker, telemetry off) with the same two
models, :mod:`floor_relay` (a byte-for-byte TCP relay: the least any relay in Python costs here) and
:mod:`http_floor` (the least an HTTP relay costs on sluiceway's own stack: uvicorn, a bare ASGI
function, aiohttp), so "sluiceway vs HTTP floor" is the share of the relay's cost that is sluiceway's
own, and the same with ``--sdk`` (``sdk-floor``: the request sent on through the official ``openai``
SDK, as sluiceway's provider sends it), so "SDK floor vs HTTP floor" is the share of the SDK.
:mod:`loadgen` runs in a process of its own for every measurement. All on loopback; every run is
bounded in requests and in time.

Order: scenario by scenario; inside a scenario, repetition by repetition, the targets take turns,
so machine noise hits them alike. Figures are medians over the repetitions; RSS is the highest
sample (every 20 ms, the server's process tree) and "KB/stream" its rise over the RSS before the
scenario's first repetition, divided by the streams open at once.

Run: ``bash scripts/bench`` (``make bench``), or ``.venv/bin/python benchmarks/relay.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
LITELLM = HERE / ".venv-litellm" / "bin" / "litellm"
FLOORS = ("floor", "http-floor", "sdk-floor")
"""The floor targets, in the order their figures are bracketed in the ratio table."""
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Relay: sluiceway vs direct vs LiteLLM"


@dataclass(frozen=True)
class Scenario:
    """One load shape: which model (fast or cadence), tokens per answer, streams at once."""

    name: str
    model: str
    tokens: int
    concurrency: int
    duration: float = 0.0
    per_worker: int = 0


@dataclass
class Target:
    """A server under test and its process."""

    name: str
    url: str
    pid: int
    models: dict[str, str]
    api_key: str = "sk-bench"


@dataclass
class Result:
    runs: list[dict[str, Any]] = field(default_factory=list)
    rss_before_kb: int = 0


def matrix(full: bool, duration: float) -> list[Scenario]:
    scenarios = [Scenario(f"max c={c}", "fast", 256, c, duration=duration) for c in (1, 16, 64)]
    scenarios += [Scenario(f"20ms c={c}", "cadence", 64, c, per_worker=1) for c in (64, 256, 1000, 2000)]
    return scenarios


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {within:.0f} s")


@contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own session (so its workers stop with it); stop it at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def sluiceway_config(tmp: Path, mock: str) -> Path:
    path = tmp / "sluiceway.toml"
    models = "".join(
        f'[models.{name}]\nprovider = "openai"\nmodel = "{upstream}"\nbase_url = "{mock}/v1"\n'
        for name, upstream in (("fast", "mock-d0"), ("cadence", "mock-d20"))
    )
    path.write_text(
        'default_model = "fast"\n'
        "disconnect_grace_s = 0\n"  # policy cancel, no grace: the cancel-latency figure
        "retention_s = 10\n"  # finished logs are not kept for resume long: RSS counts open streams
        f'data_dir = "{tmp}"\n'
        '[models.local]\nprovider = "echo"\n' + models  # no embedded model in memory
    )
    return path


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status)
        total += int(match.group(1)) if match else 0
    return total


def cpu_s(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def measure(target: Target, scenario: Scenario, mock_pid: int, limit: float) -> dict[str, Any]:
    """One loadgen run against ``target``, with its RSS peak and the CPU the server and mock used."""
    cmd = [PYTHON, str(HERE / "loadgen.py"), "--url", target.url, "--model", target.models[scenario.model]]
    cmd += ["--tokens", str(scenario.tokens), "--concurrency", str(scenario.concurrency)]
    cmd += ["--max-seconds", str(limit), "--api-key", target.api_key]
    cmd += ["--duration", str(scenario.duration)] if scenario.duration else ["--per-worker", "1"]
    cpu0, mock0, peak = cpu_s(target.pid), cpu_s(mock_pid), rss_kb(target.pid)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while proc.poll() is None:
        peak = max(peak, rss_kb(target.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed against {target.name}: {err.decode()[-2000:]}")
    run: dict[str, Any] = json.loads(out)
    run.update(rss_peak_kb=peak, server_cpu_s=round(cpu_s(target.pid) - cpu0, 3))
    run["mock_cpu_s"] = round(cpu_s(mock_pid) - mock0, 3)
    return run


def cancel_latency(target: Target, mock: str, count: int) -> dict[str, Any]:
    cmd = [PYTHON, str(HERE / "loadgen.py"), "--url", target.url, "--model", target.models["cadence"]]
    cmd += ["--tokens", "200", "--cancel", str(count), "--mock", mock, "--max-seconds", "60"]
    cmd += ["--api-key", target.api_key]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(result: Result, scenario: Scenario) -> dict[str, Any]:
    runs = result.runs
    peak = max(r["rss_peak_kb"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    keys = ("tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms")
    out: dict[str, Any] = {k: median(runs, k) for k in (*keys, "server_cpu_s", "mock_cpu_s", "elapsed_s")}
    out.update(errors=errors, rss_peak_mb=round(peak / 1024, 1), reps=len(runs))
    per_cpu = [r["tokens"] / r["server_cpu_s"] for r in runs if r["server_cpu_s"]]
    out["tokens_per_cpu_s"] = statistics.median(per_cpu) if per_cpu else None
    out["kb_per_stream"] = round(max(0, peak - result.rss_before_kb) / scenario.concurrency, 1)
    return out


def environment(litellm: bool) -> dict[str, str]:
    def rev() -> str:
        try:
            git = ["git", "-C", str(ROOT)]
            head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
            dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True, text=True)
            return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    env = {
        "machine": f"{cpu.group(1) if cpu else platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "sluiceway": f"{version('sluiceway')} (git {rev()})",
    }
    for dist in ("uvicorn", "uvloop", "httptools", "starlette", "fastapi", "openai"):
        try:
            env[dist] = version(dist)
        except Exception:
            env[dist] = "not installed"
    if litellm:
        code = "from importlib.metadata import version; print(version('litellm'))"
        env["litellm"] = subprocess.run(
            [str(LITELLM.parent / "python"), "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
    return env


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}x"


def diff(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a - b:+.1f}"


def table(summary: dict[str, dict[str, dict[str, Any]]], cancels: dict[str, dict[str, Any]]) -> str:
    head = "| scenario | target | tokens/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p99 ms | errors "
    head += "| RSS MB | KB/stream | server CPU s | mock CPU s | tokens per server CPU s |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for scenario, targets in summary.items():
        for name, s in targets.items():
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
            lines.append(
                f"| {scenario} | {name} | {fmt(s['tokens_per_s'], 0)} | {fmt(s['requests_per_s'])} "
                f"| {fmt(s['ttft_p50_ms'], 2)} | {fmt(s['ttft_p99_ms'], 2)} | {fmt(s['itl_p99_ms'], 2)} "
                f"| {errors} | {fmt(s['rss_peak_mb'])} | {fmt(s['kb_per_stream'])} "
                f"| {fmt(s['server_cpu_s'], 2)} | {fmt(s['mock_cpu_s'], 2)} "
                f"| {fmt(s['tokens_per_cpu_s'], 0)} |"
            )
    lines += [
        "",
        "Ratios (sluiceway against the others, same run; in brackets the floor · the HTTP floor · the SDK "
        "floor against "
        "direct):",
        "",
    ]
    lines.append(
        "| scenario | tokens/s vs direct (floors) | tokens/s vs HTTP floor | tokens/s vs SDK floor "
        "| tokens/s vs LiteLLM "
        "| added TTFT p50 ms (floors) | added TTFT p99 ms (floors) | added ITL p99 ms (floors) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, targets in summary.items():
        ours, d, lite = targets.get("sluiceway"), targets.get("direct"), targets.get("litellm")
        floors = [targets[f] for f in FLOORS if f in targets]
        if ours is None or d is None:
            continue

        def cell(value: str, of_floors: list[str]) -> str:
            return f"{value} ({' · '.join(of_floors)})" if of_floors else value

        rate: float | None = ours["tokens_per_s"]
        http_floor, sdk_floor = targets.get("http-floor"), targets.get("sdk-floor")
        cells = [
            cell(
                ratio(rate, d["tokens_per_s"]), [ratio(f["tokens_per_s"], d["tokens_per_s"]) for f in floors]
            )
        ]
        cells.append(ratio(rate, http_floor["tokens_per_s"] if http_floor else None))
        cells.append(ratio(rate, sdk_floor["tokens_per_s"] if sdk_floor else None))
        cells.append(ratio(rate, lite["tokens_per_s"] if lite else None))
        for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms"):
            cells.append(cell(diff(ours[key], d[key]), [diff(f[key], d[key]) for f in floors]))
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cancel latency (client closes after 3 tokens -> the upstream sees its connection close):",
        "",
    ]
    lines += ["| target | p50 ms | max ms | errors |", "|---|---:|---:|---|"]
    for name, c in cancels.items():
        errors = ", ".join(f"{k}: {v}" for k, v in c["errors"].items()) or "0"
        lines.append(f"| {name} | {fmt(c['cancel_p50_ms'], 2)} | {fmt(c['cancel_max_ms'], 2)} | {errors} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (other sections stay as they are)."""
    old = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[end:] if end >= 0 else "\n")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(new)


def section(command: str, env: dict[str, str], load: tuple[str, str], body: str, notes: list[str]) -> str:
    lines = [SECTION, "", f"Last run: {time.strftime('%Y-%m-%d %H:%M %Z')} · command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- load average (1 min) at the start / end of the run: {load[0]} / {load[1]}", ""]
    lines += [body, ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per scenario (default 3)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per max-rate run (default 3)")
    parser.add_argument("--full", action="store_true", help="LiteLLM at 1,000 and 2,000 streams too (slow)")
    parser.add_argument(
        "--targets",
        default="direct,floor,http-floor,sdk-floor,sluiceway,litellm",
        help="comma-separated subset",
    )
    parser.add_argument("--only", help="run only scenarios whose name contains this text")
    parser.add_argument("--cancels", type=int, default=10, help="cancel-latency samples per target")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2,000 streams x 2 sockets, inherited
    wanted = args.targets.split(",")
    if "litellm" in wanted and not LITELLM.exists():
        print("LiteLLM is not installed (bash benchmarks/install_litellm.sh); running without it", flush=True)
        wanted.remove("litellm")
    load_start = f"{os.getloadavg()[0]:.2f}"
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluiceway-bench-")))
        mock_port = free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        mock = stack.enter_context(
            process([PYTHON, str(HERE / "mock_upstream.py"), "--port", str(mock_port)], tmp / "mock.log")
        )
        wait_http(f"{mock_url}/stats", mock, 30)
        targets = {"direct": Target("direct", mock_url, mock.pid, {"fast": "mock-d0", "cadence": "mock-d20"})}
        for name in FLOORS:
            if name not in wanted:
                continue
            port = free_port()
            script = "floor_relay.py" if name == "floor" else "http_floor.py"
            cmd = [PYTHON, str(HERE / script), "--port", str(port), "--upstream", mock_url]
            cmd += ["--sdk"] if name == "sdk-floor" else []
            proc = stack.enter_context(process(cmd, tmp / f"{name}.log"))
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/stats", proc, 30)
            targets[name] = Target(name, url, proc.pid, {"fast": "mock-d0", "cadence": "mock-d20"})
        if "sluiceway" in wanted:
            port = free_port()
            cmd = [PYTHON, "-m", "sluiceway", "serve", "--config", str(sluiceway_config(tmp, mock_url))]
            proc = stack.enter_context(process([*cmd, "--port", str(port)], tmp / "sluiceway.log"))
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", proc, 60)
            targets["sluiceway"] = Target("sluiceway", url, proc.pid, {"fast": "fast", "cadence": "cadence"})
        if "litellm" in wanted:
            port = free_port()
            key = f"sk-{secrets.token_hex(32)}"
            env = {**os.environ, "BENCH_UPSTREAM": f"{mock_url}/v1", "LITELLM_TELEMETRY": "False"}
            env["LITELLM_MASTER_KEY"] = key
            env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCS="True")
            cmd = [str(LITELLM), "--config", str(HERE / "litellm_config.yaml"), "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--num_workers", "1", "--telemetry", "False"]
            proc = stack.enter_context(process(cmd, tmp / "litellm.log", env))
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health/liveliness", proc, 180)
            targets["litellm"] = Target("litellm", url, proc.pid, {"fast": "fast", "cadence": "cadence"}, key)
        targets = {k: v for k, v in targets.items() if k in wanted}
        print(f"targets ready in {time.monotonic() - started:.0f} s: {', '.join(targets)}", flush=True)
        for target in targets.values():  # warm up: imports, pools, first-request paths
            measure(target, Scenario("warm-up", "fast", 16, 4, duration=0.5), mock.pid, 60)
        summary: dict[str, dict[str, dict[str, Any]]] = {}
        raw: dict[str, Any] = {}
        for scenario in matrix(args.full, args.duration):
            if args.only and args.only not in scenario.name:
                continue
            skip_litellm = scenario.concurrency > 256 and not args.full
            active = {k: t for k, t in targets.items() if not (k == "litellm" and skip_litellm)}
            results = {name: Result(rss_before_kb=rss_kb(t.pid)) for name, t in active.items()}
            for _ in range(args.reps):
                for name, target in active.items():
                    results[name].runs.append(measure(target, scenario, mock.pid, 120))
            summary[scenario.name] = {name: summarize(r, scenario) for name, r in results.items()}
            raw[scenario.name] = {name: r.runs for name, r in results.items()}
            line = " · ".join(
                f"{n} {fmt(s['tokens_per_s'], 0)} tok/s" for n, s in summary[scenario.name].items()
            )
            print(f"{scenario.name}: {line}", flush=True)
        cancels = {}
        if args.cancels and not args.only:
            cancels = {name: cancel_latency(t, mock_url, args.cancels) for name, t in targets.items()}
        env_info = environment("litellm" in targets)
        logs = ROOT / "benchmarks" / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in tmp.glob("*.log"):
            shutil.copy(log, logs / log.name)
    body = table(summary, cancels)
    print()
    print(body)
    load = (load_start, f"{os.getloadavg()[0]:.2f}")
    print(f"\nload average at start / end: {load[0]} / {load[1]} · took {time.monotonic() - started:.0f} s")
    command = os.environ.get("SLUICEWAY_BENCH_COMMAND") or " ".join(["benchmarks/relay.py", *sys.argv[1:]])
    notes = [
        "direct = the mock upstream read by the load generator itself (the ceiling); floor = "
        "benchmarks/floor_relay.py, a byte-for-byte TCP relay in front of the mock (the least any relay in "
        "Python costs on this machine: one read and one write per chunk, no parsing); HTTP floor = "
        "benchmarks/http_floor.py, the least an HTTP relay costs on sluiceway's stack (uvicorn parses the "
        "request, a bare ASGI function sends it on with aiohttp and streams the body back unchanged, a "
        "disconnect cancels it); SDK floor = the same, the request sent on through the openai SDK as "
        "sluiceway's provider sends it (what the official SDK adds to an HTTP relay); "
        "LiteLLM at 1,000 and 2,000 streams only with `--full` (minutes per run at its rate).",
        "tokens/s counts text deltas received by the client; TTFT is from connect to the first text delta; "
        "ITL is the gap between consecutive text deltas (deltas read together count 0 ms apart).",
        "server CPU s / mock CPU s: CPU time the server (direct: the mock) and the mock spent per run; a 3 s "
        "run at 100% of one core is 3 s. Tokens per server CPU s is the figure least moved by other load on "
        "the machine (the throughput columns are not: see the load average above).",
    ]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"env": env_info, "summary": summary, "runs": raw, "cancel": cancels})
        )
    if not args.no_docs:
        write_docs(section(command, env_info, load, body, notes))
        print(f"wrote {DOCS.relative_to(ROOT)}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
