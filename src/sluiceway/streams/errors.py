"""Errors the stream lifecycle raises, in the :class:`~sluiceway.errors.SluicewayError` tree.

::

    SluicewayError
    ├── ShuttingDownError    shutting_down     503  (retryable)
    ├── StreamNotFoundError  stream_not_found  404
    └── ReaderLaggedError    reader_lagged     409  (retryable: resume after the event it names)

They live beside the code that raises them until :mod:`sluiceway.errors` adopts them.
"""

from __future__ import annotations

from sluiceway.errors import SluicewayError


class ShuttingDownError(SluicewayError):
    """The server is shutting down: no new generation starts; a running one ended at the grace."""

    code = "shutting_down"
    status = 503
    retryable = True


class StreamNotFoundError(SluicewayError):
    """No live or retained stream has this id (it never existed or its retention ended)."""

    code = "stream_not_found"
    status = 404


class ReaderLaggedError(SluicewayError):
    """A reader fell so far behind that the events it needs next left the bounded log."""

    code = "reader_lagged"
    status = 409
    retryable = True
