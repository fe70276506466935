"""When does a workload give its resources back? Pure rules over plain values.

No asyncio, no clock reads: callers pass what they measured. ``should_hibernate``
judges from what the proxy sees (requests in flight or queued, the last activity);
``server_keeps_awake`` from what a server reports about itself (a notebook server's
busy kernels and its own idle time), for servers that can be busy with no request in
flight. Which workload leaves the device when another needs room is placement policy,
beside this in ``warmpool.placement``.
"""

from __future__ import annotations

__all__ = ["server_keeps_awake", "should_hibernate"]


def should_hibernate(
    *, serving: bool, in_flight: int, waiting: int, idle_for: float, idle_after: float
) -> bool:
    """A serving workload with nothing in flight or queued, idle for ``idle_after``
    seconds (0 disables idle hibernation)."""
    return idle_after > 0 and serving and in_flight == 0 and waiting == 0 and idle_for >= idle_after


def server_keeps_awake(
    *, busy: int | None, server_idle_for: float, idle_for: float, idle_after: float
) -> float | None:
    """Whether a server that the proxy sees idle (for ``idle_for`` seconds) is in fact
    active, by its own report: ``busy`` units of work running now (a notebook's busy
    kernels; None: the server did not answer) and ``server_idle_for`` seconds since its
    own last activity.

    Returns how many seconds ago it was last active when that keeps it awake: 0 while
    anything is busy (however long it has been running), or the server's own idle time
    when it saw activity more recently than the proxy did and less than ``idle_after``
    ago. Returns None when it may hibernate, which includes not knowing (the proxy's
    view stands)."""
    if busy is None:
        return None
    if busy > 0:
        return 0.0
    if server_idle_for < idle_for and server_idle_for < idle_after:
        return server_idle_for
    return None
