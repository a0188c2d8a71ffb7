"""The life of one generation, independent of HTTP: run, log, fan out, resume, cancel, drain.

The Redis backend (:mod:`sluiceway.streams.redis_backend`) is imported only when used: it needs the
``redis`` extra.
"""

from sluiceway.errors import ReaderLaggedError, ShuttingDownError, StreamNotFoundError
from sluiceway.streams.backend import MemoryBackend, RemoteStreamInfo, StreamBackend
from sluiceway.streams.generation import Meter, RetryPolicy, Timeouts, run_generation
from sluiceway.streams.hub import DisconnectPolicy, HubSettings, RemoteStream, Stream, StreamHub
from sluiceway.streams.limits import ConcurrencyLimits
from sluiceway.streams.log import Batch, MemoryStreamLog, StreamLog
from sluiceway.streams.shutdown import ShutdownSignal

__all__ = [
    "Batch",
    "ConcurrencyLimits",
    "DisconnectPolicy",
    "HubSettings",
    "MemoryBackend",
    "MemoryStreamLog",
    "Meter",
    "ReaderLaggedError",
    "RemoteStream",
    "RemoteStreamInfo",
    "RetryPolicy",
    "ShutdownSignal",
    "ShuttingDownError",
    "Stream",
    "StreamBackend",
    "StreamHub",
    "StreamLog",
    "StreamNotFoundError",
    "Timeouts",
    "run_generation",
]
