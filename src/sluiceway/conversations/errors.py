"""The conversation store's errors, in the :class:`~sluiceway.errors.SluicewayError` tree::

    SluicewayError
    ├── ConversationNotFoundError   not_found           404
    └── StoreUnavailableError       store_unavailable   503  (retryable)

Database driver errors are translated into these at one boundary, the SQL store's transaction.
"""

from __future__ import annotations

from sluiceway.errors import SluicewayError


class ConversationNotFoundError(SluicewayError):
    """No conversation has this id (never had, or it was deleted)."""

    code = "not_found"
    status = 404


class StoreUnavailableError(SluicewayError):
    """The database could not be reached or refused the operation; the details are logged."""

    code = "store_unavailable"
    status = 503
    retryable = True
