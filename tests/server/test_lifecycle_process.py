"""What only a server process can show: SIGTERM draining and the memory bound of a stuck reader."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from sluiceway.wire.sse import SSEDecoder
from tests.streams.processes import ServerProcess, serve_process

MIB = 1024 * 1024


class Chat(threading.Thread):
    """One streaming request read to its end in a thread; ``first`` is set at its first chunk."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.first = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        decoder = SSEDecoder()
        try:
            with httpx.stream("POST", f"{self.url}/chat/stream", json=self.body, timeout=60) as r:
                for piece in r.iter_raw():
                    self.events.extend(e.data for e in decoder.feed(piece))
                    if any('"chunk"' in e for e in self.events):
                        self.first.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.first.set()

    def outcome(self) -> str:
        """``done:<finish reason>`` or ``error:<code>``, from the last event before ``[DONE]``."""
        assert self.events and self.events[-1] == "[DONE]", self.events[-3:]
        last = json.loads(self.events[-2])
        return f"done:{last['finish_reason']}" if last["type"] == "done" else f"error:{last['code']}"


def test_sigterm_lets_short_streams_finish_and_ends_the_rest_with_shutting_down() -> None:
    grace = 1.5
    with serve_process("--shutdown-grace-s", str(grace)) as srv:
        short = Chat(srv.url, {"message": "one two three four", "model": "slow"})
        long = [Chat(srv.url, {"message": " ".join(["w"] * 400), "model": "slow"}) for _ in range(2)]
        finish_policy = Chat(
            srv.url, {"message": " ".join(["w"] * 400), "model": "slow", "disconnect": "finish"}
        )
        chats = [short, *long, finish_policy]
        for chat in chats:
            chat.start()
        for chat in chats:
            assert chat.first.wait(20)
        srv.terminate()
        signalled = time.monotonic()
        for chat in chats:
            chat.join(grace + 15)
        srv.proc.wait(grace + 15)
        exited = time.monotonic() - signalled
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.post(f"{srv.url}/chat/stream", json={"message": "x"}, timeout=2)
    assert all(chat.error is None for chat in chats), [chat.error for chat in chats]
    assert short.outcome() == "done:stop"
    assert [chat.outcome() for chat in (*long, finish_policy)] == ["error:shutting_down"] * 3
    ended = [(chat.ended_at or 0) - signalled for chat in (*long, finish_policy)]
    assert all(grace - 0.2 < t < grace + 5 for t in ended), ended
    assert exited < grace + 10 and srv.proc.returncode in (0, -15), (exited, srv.proc.returncode)


def _flood_with_a_reader_that_never_reads(srv: ServerProcess) -> tuple[int, int]:
    """Baseline and peak RSS (KiB) while the flood model answers a client that never reads."""
    httpx.post(f"{srv.url}/chat/stream", json={"message": "warm up", "model": "echo"}, timeout=30)
    baseline = srv.rss_kib()
    host, port = srv.url.removeprefix("http://").split(":")
    body = json.dumps({"message": "flood", "model": "flood", "disconnect": "finish"}).encode()
    head = f"POST /chat/stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    peak = baseline
    with socket.create_connection((host, int(port)), timeout=10) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stuck.sendall(head.encode() + body)  # ... and never recv()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, srv.rss_kib())
            active = httpx.get(f"{srv.url}/healthz", timeout=10).json()["active_streams"]
            if active == 0 and peak > baseline:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the flood did not finish")
        for _ in range(10):
            peak = max(peak, srv.rss_kib())
            time.sleep(0.02)
    return baseline, peak


@pytest.mark.parametrize(("bound_mib", "within"), [(2, True), (1024, False)], ids=["bounded", "unbounded"])
def test_a_client_that_never_reads_does_not_grow_memory_beyond_the_bound(
    bound_mib: int, within: bool
) -> None:
    count, size = 4096, 16 * 1024  # 64 MiB of text
    with serve_process(
        "--max-stream-bytes", str(bound_mib * MIB), test_providers=True, flood_count=count, flood_size=size
    ) as srv:
        baseline, peak = _flood_with_a_reader_that_never_reads(srv)
    growth_mib = (peak - baseline) / 1024
    rss = f"RSS {baseline / 1024:.1f} -> {peak / 1024:.1f} MiB (+{growth_mib:.1f})"
    print(f"max_stream_bytes={bound_mib} MiB: {rss}")
    if within:
        assert growth_mib < bound_mib + 4  # the bound, plus one batch, buffers and allocator slack
    else:  # the control: without a bound the same flood is held in memory, so the test measures it
        assert growth_mib > 40
