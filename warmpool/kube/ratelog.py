"""Log lines about a problem that repeats (an API server down, a pod not answering), at most
one per distinct problem per interval, with the count of those left out.

The first occurrence of a key is logged at once; later ones within ``interval`` are counted;
the first one after it is logged with "(N more like it in the last S s)". A problem that
stops repeating costs nothing: nothing is logged for its silence."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 256,
    ) -> None:
        self._log, self._interval, self._clock, self._limit = logger, interval, clock, limit
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, left out since)

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval; whether it was."""
        now = self._clock()
        at, skipped = self._last.get(key, (float("-inf"), 0))
        if now - at < self._interval:
            self._last[key] = (at, skipped + 1)
            return False
        if len(self._last) >= self._limit and key not in self._last:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        if skipped:
            message += " (%d more like it in the last %.0fs)"
            args = (*args, skipped, now - at)
        self._log.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.INFO, key, message, *args)
