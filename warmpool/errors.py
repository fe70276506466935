"""The resource plane's exception tree."""

from __future__ import annotations

__all__ = ["StartFailed", "WarmpoolError"]


class WarmpoolError(Exception):
    """Base class of everything the warmpool package raises."""


class StartFailed(WarmpoolError):
    """An instance did not become healthy: its command exited, or the health check timed out."""
