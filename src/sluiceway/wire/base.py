"""The seam between the stream log and a client protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sluiceway.events import Event


class Encoder(Protocol):
    """Turns one stream's events into a protocol's bytes. One instance per response (stateful).

    ``seq`` is the event's position in the stream log (1-based); SSE encoders put
    ``<stream_id>:<seq>`` in the ``id:`` field so a client can resume after it.
    """

    @property
    def media_type(self) -> str:
        """The response's content type."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Extra response headers the protocol needs."""
        ...

    def start(self) -> bytes:
        """Bytes to send before any event (may be empty)."""
        ...

    def encode(self, seq: int, event: Event) -> bytes:
        """Bytes for one event (may be empty, e.g. a ``Usage`` remembered for the end)."""
        ...

    def heartbeat(self) -> bytes:
        """Bytes that keep an idle connection alive without changing what the client sees."""
        ...
