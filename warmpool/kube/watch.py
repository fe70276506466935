"""A namespace's ScaleToZeroPolicies as a stream of changes, for the activator.

``start()`` lists them (the items are returned) and starts a watch in a thread (the official
client blocks); ``next()`` gives ``(kind, payload)``: ``("ADDED"|"MODIFIED"|"DELETED", obj)``,
or ``("list", items)`` after a relist. Events reach the event loop through a bounded queue (the
thread waits when it is full); a watch that ends is resumed from its last resourceVersion, and
one that fails (410 Gone, an error status) is replaced by a fresh list, with back-off.
``stop()`` ends the thread within the watch's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from warmpool.kube.api import KubeApi, KubeError
from warmpool.kube.resource import GROUP, PLURAL, VERSION, collection_path

__all__ = ["PolicyWatch"]

log = logging.getLogger("dormant.cluster")

QUEUE = 256
"""Events waiting for the event loop (the watch thread blocks beyond that)."""


def _leaving(policy: dict[str, Any]) -> bool:
    """Deleted, held only by a finalizer (the operator's ``dormant.dev/release`` gives the
    target back meanwhile): for the activator it is gone, never to be hibernated, woken or
    routed again."""
    return bool((policy.get("metadata") or {}).get("deletionTimestamp"))


def _present(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in policies if not _leaving(p)]


class PolicyWatch:
    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _path(self) -> str:
        return collection_path(self.namespace)

    async def start(self) -> list[dict[str, Any]]:
        """The policies now; changes from then on come from ``next()``. KubeError when they
        cannot be listed."""
        listed = await self.api.get(self._path)
        version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._watch_loop, args=(version,), name="policy-watch", daemon=True
        )
        self._thread.start()
        return _present(listed.get("items") or [])

    async def next(self) -> tuple[str, Any]:
        return await self._queue.get()

    async def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            if self._thread.is_alive():
                log.info("the policy watch thread ends with its request (daemon)")

    def _post(self, kind: str, payload: Any) -> bool:
        """Hand an event to the loop (blocks while the queue is full); False when stopping."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping.is_set():
            return False
        future = asyncio.run_coroutine_threadsafe(self._queue.put((kind, payload)), loop)
        while not self._stopping.is_set():
            try:
                future.result(timeout=1.0)
                return True
            except TimeoutError:
                continue
            except Exception:
                return False
        future.cancel()
        return False

    def _watch_loop(self, version: str) -> None:
        from kubernetes import client as k8s
        from kubernetes import watch

        custom = k8s.CustomObjectsApi(self.api.client)
        backoff = 1.0
        while not self._stopping.is_set():
            if not version:
                try:
                    listed = self.api.call("GET", self._path)
                except KubeError as exc:
                    log.warning(
                        "cannot list ScaleToZeroPolicies: %s (again in %.0fs)", exc, backoff
                    )
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
                if not self._post("list", _present(listed.get("items") or [])):
                    return
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=30,
                    _request_timeout=60,
                ):
                    obj = event.get("raw_object") or event.get("object")
                    if not isinstance(obj, dict) or "metadata" not in obj:
                        continue
                    version = str(obj["metadata"].get("resourceVersion") or version)
                    kind = str(event.get("type"))
                    if _leaving(obj) and kind in ("ADDED", "MODIFIED"):
                        kind = "DELETED"  # the operator is giving its target back
                    if not self._post(kind, obj):
                        return
                backoff = 1.0
            except Exception as exc:  # 410 Gone (too old), a dropped connection, ...
                if self._stopping.is_set():
                    return
                status = getattr(exc, "status", 0)
                log.info("policy watch ended (%s); %s", exc, "relisting" if status else "resuming")
                if status:  # 410 Gone (the version is too old) or another refusal: relist
                    version = ""
                self._stopping.wait(min(backoff, 5.0))
                backoff = min(backoff * 2, 30.0)
