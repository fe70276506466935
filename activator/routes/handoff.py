"""Handing one HTTP request to a workload: read its body (bounded), take a lease on the
workload (waiting while it wakes, leaving the queue if the client goes), then forward it.

Shared by the OpenAI routes (routed by ``model``) and the pass-through routes (by path
prefix or Host)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastapi import Request, Response
from starlette.requests import ClientDisconnect

from activator.access import record
from activator.config.settings import WorkloadSettings
from activator.errors import ClientGone, PayloadTooLarge
from activator.lease import Lease
from activator.limits import BodyClock, broken_body
from activator.metrics import Metrics
from activator.proxy import Call, Session, Timeouts, forward, waking_stream
from activator.routes.waking import waking_page, wants_waking_page
from activator.workload import Workload

__all__ = ["PAGE_PATIENCE", "Handoff", "read_body"]

log = logging.getLogger("dormant.activator")

PAGE_PATIENCE = 1.0
"""How long (seconds) a browser's request waits for a wake before it gets the waking page
instead: a restore that is over by then shows the real page at once."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body: at most ``limit`` bytes (413), not too slowly (408, see
    ``limits.BodyClock``), well framed (400, see ``limits.broken_body``); a client that
    leaves mid-body is ClientGone (one INFO line)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, clock = [], BodyClock()
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(max(clock.next_wait(), 0.0)):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise clock.error() from None
        except ClientDisconnect:
            log.info(
                "client left mid-body after %d bytes (request_id=%s)",
                clock.size,
                record(request).request_id,
            )
            raise ClientGone("client left while sending its request body") from None
        clock.received(len(chunk))
        if clock.size > limit:
            raise PayloadTooLarge(
                f"request body exceeds the {limit}-byte limit", headers={"Connection": "close"}
            )
        chunks.append(chunk)
    if (broken := broken_body(request.scope)) is not None:
        raise broken  # the body could not be parsed: it ended early (400)
    return b"".join(chunks)


def _timeouts(s: WorkloadSettings) -> Timeouts:
    return Timeouts(s.connect_timeout, s.first_byte_timeout, s.stream_idle_timeout)


async def _acquire_or_abandon(
    request: Request, workload: Workload, *, wake: bool = True, activity: bool = True
) -> Lease:
    """Wait for a lease, but leave the queue as soon as the client disconnects."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    acquiring = asyncio.ensure_future(workload.acquire(wake=wake, activity=activity))
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({acquiring, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            raise ClientGone(
                f"client left while waiting for {workload.name}", workload=workload.name
            )
    return acquiring.result()


class Handoff:
    """Forwards requests to workloads over the activator's one upstream session."""

    def __init__(self, session: Callable[[], Session], metrics: Metrics) -> None:
        self._session = session  # opened by the lifespan, after the routes are built
        self._metrics = metrics

    async def __call__(
        self,
        request: Request,
        workload: Workload,
        body: bytes,
        stream: bool,
        path: str,
        activity: bool = True,
    ) -> Response:
        """Forward now if ``workload`` is ready, else wait for its wake: a ``stream``
        request gets keep-alive comments meanwhile (every ``wake_keepalive``), a browser
        opening a page gets the waking page (503, reloading itself) when the wake takes
        longer than PAGE_PATIENCE. A request that is not ``activity`` (a notebook page's
        housekeeping, see ``activator.activity``) never wakes the workload: it waits for
        a wake under way, or gets NotAwake (409)."""
        call = Call(
            self._session(),
            request,
            body,
            path,
            _timeouts(workload.settings),
            workload.name,
            record(request),
            self._metrics,
        )
        call.record.workload = workload.name
        lease = workload.try_acquire(activity=activity)
        if lease is None and not activity:
            lease = await _acquire_or_abandon(request, workload, wake=False, activity=False)
        if lease is None and wants_waking_page(
            request.method, request.headers.get("accept", ""), stream
        ):
            wake = workload.begin_wake()
            if wake is not None:
                await asyncio.wait({wake}, timeout=PAGE_PATIENCE)
                if not wake.done():
                    call.record.outcome = "waking"
                    last = workload.last_wake
                    return waking_page(
                        workload.name, workload.waking_for(), last.seconds if last else None
                    )
            # ready (or the wake ended, well or not): on as any request
        if lease is None:
            every = workload.settings.wake_keepalive
            if stream and every > 0:
                return waking_stream(call, workload.acquire, every)
            lease = await _acquire_or_abandon(request, workload)
        return await forward(call, lease)
