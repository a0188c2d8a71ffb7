"""A loopback TCP proxy that cuts a connection off mid-stream, to force a client to resume.

Every connection is forwarded byte for byte to the target. The first one is reset (RST, no FIN)
right after the response bytes holding its ``after``-th seed text event have been passed on. Later
connections (the resumes) are passed through, or with ``later="reset"`` reset as soon as they open.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

MARK = b'"type":"chunk"'


class DroppingProxy:
    """Forward ``127.0.0.1:port`` to ``target_port``, cutting the first stream after ``after`` texts."""

    def __init__(self, target_port: int, *, after: int, later: Literal["pass", "reset"] = "pass") -> None:
        self.target_port = target_port
        self.after = after
        self.later = later
        self.connections = 0
        self.resets = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            first = self.connections == 1
            if not first and self.later == "reset":
                self.resets += 1
                _reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for args in ((client, upstream, False), (upstream, client, first)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        seen, tail = 0, b""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                seen += (tail + data).count(MARK)
                tail = data[-(len(MARK) - 1) :]
                if cut and seen >= self.after:
                    self.resets += 1
                    _reset(dst)
                    _reset(src)
                    return
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._listener.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST. ``SHUT_RD`` first wakes a thread blocked reading this socket, which
    would otherwise hold the socket open past ``close``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()


@contextmanager
def dropping_proxy(
    target_port: int, *, after: int, later: Literal["pass", "reset"] = "pass"
) -> Iterator[DroppingProxy]:
    """Run a :class:`DroppingProxy` in a thread for the block."""
    proxy = DroppingProxy(target_port, after=after, later=later)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(5)
