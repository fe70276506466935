"""What ``dormant exec`` knows of its served port's traffic, without being in its path.

``PortWatch`` reads the kernel's sockets (``warmpool.process.sockets``) in a thread, applies the
quiet rule (``warmpool.process.quiet``) and remembers when it last saw data, so ``idle_s`` outlives
the connections: the supervisor samples it every ``watch`` interval while serving, and
``GET /activity`` reads it fresh. A connection that opens and closes between two samples is
not seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from warmpool import WarmpoolError
from warmpool.process.quiet import busy_reasons, last_data_age
from warmpool.process.sockets import PortActivity, port_activity

__all__ = ["PortWatch"]

log = logging.getLogger("dormant.exec")


class PortWatch:
    """The served ``port``'s activity; ``quiet`` seconds as in ``warmpool.process.quiet``."""

    def __init__(
        self,
        port: int,
        quiet: float,
        read: Callable[[int], PortActivity] = port_activity,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port, self.quiet, self._read, self._clock = port, quiet, read, clock
        self.last: PortActivity | None = None
        self._active_at = clock()

    def touch(self) -> None:
        """Count now as activity (the server just came up)."""
        self._active_at = self._clock()

    async def read(self) -> PortActivity | None:
        """The port now, or None (logged) when the kernel's sockets cannot be read."""
        try:
            activity = await asyncio.to_thread(self._read, self.port)
        except WarmpoolError as exc:
            log.warning("cannot read the served port's sockets: %s", exc)
            return None
        self.last = activity
        age = last_data_age(activity.connections)
        if busy_reasons(activity.connections, self.quiet, activity.listeners):
            self._active_at = self._clock()
        elif age is not None:
            self._active_at = max(self._active_at, self._clock() - age)
        return activity

    async def wait_quiet(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the port to be quiet; why it is still busy
        ([] when quiet)."""
        deadline = self._clock() + timeout
        while True:
            activity = await self.read()
            reasons = (
                ["the served port's sockets cannot be read"]
                if activity is None
                else busy_reasons(activity.connections, self.quiet, activity.listeners)
            )
            left = deadline - self._clock()
            if not reasons or left <= 0:
                return reasons
            await asyncio.sleep(min(0.1, left))

    def view(self) -> dict[str, Any]:
        """For ``GET /activity`` and ``/status``: the last reading."""
        a = self.last
        reasons = busy_reasons(a.connections, self.quiet, a.listeners) if a else ["not read yet"]
        return {
            "port": self.port,
            "source": a.source if a else None,
            "connections": len(a.connections) if a else None,
            "busy": bool(reasons),
            "reasons": reasons[:20],
            "last_data_s": last_data_age(a.connections) if a else None,
            "idle_s": round(self._clock() - self._active_at, 3),
            "quiet_s": self.quiet,
            "read_s_ago": round(self._clock() - a.at, 3) if a else None,
            "detail": [
                {
                    "remote": f"{c.remote[0]}:{c.remote[1]}",
                    "state": c.state,
                    "unread_bytes": c.rqueue,
                    "unacked_bytes": c.wqueue,
                    "last_recv_ms": c.last_recv_ms,
                    "last_sent_ms": c.last_sent_ms,
                }
                for c in (a.connections[:20] if a else ())
            ],
        }
