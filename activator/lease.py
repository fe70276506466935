"""What a request or a WebSocket holds while it uses a workload's instance.

A ``Lease`` is permission to send one request to a ready instance (released exactly once);
a ``Connection`` is a proxied WebSocket, counted apart from requests. Both are made by the
workload's owner (``activator.workload``) and report back to it through the callbacks it
gives them; neither changes a workload's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from warmpool import Endpoint, Instance

__all__ = ["Connection", "Lease", "WakeRecord"]


@dataclass(frozen=True)
class WakeRecord:
    """How a workload last became ready: ``path`` is boot, restore or resume."""

    path: str
    seconds: float
    at: float
    phases: tuple[tuple[str, float], ...] = ()
    """Where the seconds went, as the runtime saw them (Kubernetes: ``scaled``, ``scheduled``,
    ``running``, ``ready``, each in seconds since the wake began); empty where it cannot say."""

    def header(self) -> str:
        """The one format of a wake, in the ``X-Dormant-Wake`` header and the access log:
        ``restore; 0.412``."""
        return f"{self.path}; {self.seconds:.3f}"


class Lease:
    """Permission to send one request to a ready instance; release exactly once."""

    __slots__ = ("_on_release", "_released", "instance", "waited")

    def __init__(
        self, instance: Instance, waited: WakeRecord | None, on_release: Callable[[], None]
    ) -> None:
        self._on_release = on_release
        self._released = False
        self.instance = instance
        self.waited = waited

    @property
    def endpoint(self) -> Endpoint:
        return self.instance.endpoint

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._on_release()


class Connection:
    """A proxied WebSocket: counted apart from requests. Messages count as activity
    (``touch``); an open but silent connection does not keep the workload awake.
    Hibernation asks every connection to close (``closing``) after the requests drained."""

    def __init__(
        self,
        instance: Instance,
        waited: WakeRecord | None,
        on_activity: Callable[[], None],
        on_close: Callable[[Connection], None],
    ) -> None:
        self.instance = instance
        self.waited = waited
        self.closing = asyncio.Event()
        self._on_activity = on_activity
        self._on_close = on_close

    @property
    def endpoint(self) -> Endpoint:
        return self.instance.endpoint

    def touch(self) -> None:
        self._on_activity()

    def close(self) -> None:
        self._on_close(self)
