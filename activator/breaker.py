"""Is there room? A FIFO counter of request slots (``max_in_flight``).

Together with the workload's bounded queue this is Knative's "breaker": requests
beyond capacity wait in order, up to a deadline, and beyond the queue depth are
refused at once.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["Slots"]


class Slots:
    """At most ``capacity`` holders at once (0 = unlimited); waiters are served in order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        """Take a slot now if one is free and nobody is waiting ahead of us."""
        if self.capacity == 0 or (self.held < self.capacity and not self._waiters):
            self.held += 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot. A cancelled waiter leaves the line (and hands back a slot
        it was given at the last moment)."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Return a slot; it goes straight to the first live waiter."""
        self.held -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)
                return
