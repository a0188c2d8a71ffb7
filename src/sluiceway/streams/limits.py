"""How many generations may run at once, per server and per model.

Admission happens before a stream exists, so a refusal is a plain HTTP 429 (``overloaded`` with
``Retry-After``) and no byte of a stream was ever sent. ``0`` means no limit.
"""

from __future__ import annotations

from collections import Counter

from sluiceway.errors import OverloadedError


class ConcurrencyLimits:
    """Counts running generations; :meth:`acquire` refuses beyond the limits, :meth:`release` frees."""

    def __init__(self, max_total: int = 0, max_per_model: int = 0, retry_after_s: float = 1.0) -> None:
        self.max_total = max_total
        self.max_per_model = max_per_model
        self.retry_after_s = retry_after_s
        self.running = 0
        self._per_model: Counter[str] = Counter()

    def acquire(self, model: str) -> None:
        """Take a slot for one generation of ``model`` or raise :class:`OverloadedError`."""
        if self.max_total and self.running >= self.max_total:
            raise OverloadedError(
                f"this server already runs {self.running} generations (max_concurrent); try again later",
                retry_after=self.retry_after_s,
            )
        if self.max_per_model and self._per_model[model] >= self.max_per_model:
            raise OverloadedError(
                f"model {model!r} already runs {self._per_model[model]} generations "
                "(max_concurrent_per_model); try again later",
                retry_after=self.retry_after_s,
            )
        self.running += 1
        self._per_model[model] += 1

    def release(self, model: str) -> None:
        """Give back the slot taken for ``model``."""
        self.running -= 1
        self._per_model[model] -= 1
        if self._per_model[model] <= 0:
            del self._per_model[model]

    def running_for(self, model: str) -> int:
        """Generations of ``model`` running now."""
        return self._per_model[model]
