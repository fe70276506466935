"""Is an instance answering yet? Poll its health endpoint with a deadline."""

from __future__ import annotations

import asyncio
import time

import httpx

from warmpool.errors import StartFailed
from warmpool.runtime import Instance, InstanceSpec

__all__ = ["wait_healthy"]


async def wait_healthy(
    instance: Instance, spec: InstanceSpec, client: httpx.AsyncClient, timeout: float
) -> float:
    """Wait until ``GET spec.health_path`` on the instance's endpoint answers 200; returns
    the seconds waited. Fails fast, with the instance's exit reason, when it exits first."""
    url = instance.endpoint.url + spec.health_path
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
            # from a TimeoutError: a server that is only slow says nothing about a snapshot
            raise StartFailed(
                f"{spec.name}: not healthy after {timeout:.0f}s ({last}); {_output(instance)}"
            ) from TimeoutError(f"not healthy after {timeout:.0f}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


def _output(instance: Instance) -> str:
    """The instance's last output lines, where the runtime keeps them."""
    output = getattr(instance, "output", None)
    tail = " | ".join(output.tail(8)) if output is not None else ""
    return f"last output: {tail or '(none)'}"
