"""A background job that runs at a fixed interval until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("sessionrec.periodic")


class PeriodicTask:
    """Calls ``fn`` every ``interval_s`` seconds on a daemon thread.

    An exception is logged with its traceback and the next run happens as
    usual; ``stop()`` wakes the thread at once instead of waiting out the
    interval.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], None]):
        self.name = name
        self.interval_s = interval_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._fn()
            except Exception:
                log.exception("%s failed; next try in %.1fs", self.name, self.interval_s)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
