"""Is an instance answering yet? Poll its health endpoint with a deadline."""

from __future__ import annotations

import asyncio
import time

import httpx

from .errors import StartFailed
from .instance import Instance

__all__ = ["wait_healthy"]


async def wait_healthy(instance: Instance, client: httpx.AsyncClient, timeout: float) -> float:
    """Wait until ``GET health_path`` answers 200; returns the seconds waited.

    Fails fast, with the server's last output, when the process exits first.
    """
    spec = instance.spec
    url = f"http://127.0.0.1:{instance.port}{spec.health_path}"
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.01
    last = "no answer yet"
    while True:
        if not instance.alive():
            raise StartFailed(f"{spec.name}: command {instance.exit_reason()}")
        try:
            response = await client.get(
                url, timeout=max(0.1, min(2.0, deadline - time.monotonic()))
            )
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"{spec.health_path} answered {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        if time.monotonic() >= deadline:
            tail = " | ".join(instance.output.tail(8))
            raise StartFailed(
                f"{spec.name}: not healthy after {timeout:.0f}s ({last}); "
                f"last output: {tail or '(none)'}"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
