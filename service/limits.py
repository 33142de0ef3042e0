"""Rate limits: token buckets per key (a user id, an API key id), in memory.

Each key has a bucket of ``burst`` tokens refilled at ``rate`` tokens per
second; a request takes as many tokens as it costs (1 per call, or 1 per
event). A request that does not fit is refused with
:class:`~sessionrec.errors.ResourceExhausted` carrying how long until it would
fit (``retry_after_ms``, sent to the client as the ``retry-after-ms`` trailing
metadata). At most ``max_keys`` buckets are kept, the least recently used
dropped first (a dropped key starts again with a full bucket).

Limits are per server process: several servers behind a load balancer each
enforce their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sessionrec.errors import ResourceExhausted

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` tokens per second per key, at most ``burst`` saved up (rate 0: no limit)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        what: str = "requests",
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate: must be a finite number >= 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, 2 * rate))
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst: must be >= 1, got {self.burst}")
        self.what = what
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of the last update); least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0, *, field: str = "") -> None:
        """Takes ``cost`` tokens from ``key``'s bucket or raises ResourceExhausted
        (taking nothing). ``field`` starts the error message."""
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if cost <= tokens:
                self._buckets[key] = (tokens - cost, now)
                self._trim()
                return
            self._buckets[key] = (tokens, now)
            self._trim()
        if cost > self.burst:
            raise ResourceExhausted(
                f"{field or 'rate'}: {cost:g} {self.what} at once is more than the limit of "
                f"{self.burst:g}; send smaller batches"
            )
        wait_ms = math.ceil((cost - tokens) / self.rate * 1000)
        raise ResourceExhausted(
            f"{field or 'rate'}: over the limit of {self.rate:g} {self.what} per second "
            f"(burst {self.burst:g}); retry in {wait_ms} ms",
            retry_after_ms=wait_ms,
        )

    def _trim(self) -> None:
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
