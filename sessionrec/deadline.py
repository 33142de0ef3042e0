"""The caller's deadline, for the code that waits on its behalf.

The gRPC layer (``service.interceptors``) records how long the caller is still
willing to wait when a call starts; code deep below it that may *wait* (the
store's write lock and SQLite's busy handler) asks :func:`remaining_s` and
waits no longer than that, so a call answers (UNAVAILABLE) before its caller
gives up instead of working for nobody. Outside a call (background threads,
the CLI) there is no deadline and :func:`remaining_s` is None.

A context variable, so each gRPC worker thread sees its own call's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: A deadline further away than this (seconds) is no deadline: gRPC reports
#: "none" as a time in the far future.
NO_DEADLINE_S = 1e8

_deadline: ContextVar[float | None] = ContextVar("sessionrec_deadline", default=None)


@contextmanager
def caller_deadline(remaining_s: float | None) -> Iterator[None]:
    """Within the block, the caller waits at most ``remaining_s`` more seconds
    (None, or a far-away time: no deadline)."""
    at = None
    if remaining_s is not None and remaining_s < NO_DEADLINE_S:
        at = time.monotonic() + max(remaining_s, 0.0)
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_s() -> float | None:
    """Seconds the current caller still waits (>= 0), or None without a deadline."""
    at = _deadline.get()
    if at is None:
        return None
    return max(at - time.monotonic(), 0.0)
