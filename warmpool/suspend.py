"""Suspend engines: park an instance's device memory in host RAM and bring it back.

The ``suspended`` tier: the process stays alive, the device is free for another model.
A workload's ``suspend:`` setting chooses the engine (``make_engine``):

``hooks``
    The server's own API, as HTTP calls against the instance's ``Endpoint``:
    ``POST /sleep?level=1`` / ``POST /wake_up`` for vLLM (and the reference server),
    ``POST /release_memory_occupation`` / ``POST /resume_memory_occupation`` for SGLang.
``cuda``
    The CUDA driver's checkpoint API (``snapshots.cuda``) on every CUDA process of the
    instance's tree, by PID: works for any CUDA server, with no help from it.

Both raise warmpool's errors only: ``SuspendFailed`` (the instance keeps serving where
the engine could leave it so), ``ResumeFailed``, ``NotSupported``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx

from snapshots import EngineDumpFailed, EngineRestoreFailed, EngineUnavailable, process_tree
from snapshots.cuda import CudaCheckpoint, CudaDriver, resume_tree
from snapshots.cuda_view import Probes, park
from warmpool.errors import NotSupported, ResumeFailed, SuspendFailed
from warmpool.runtime import Endpoint, Instance

__all__ = [
    "DEFAULT_SLEEP",
    "DEFAULT_WAKE",
    "ENGINES",
    "CudaEngine",
    "Hook",
    "HooksEngine",
    "SuspendEngine",
    "SuspendTarget",
    "Toggle",
    "make_engine",
]

DEFAULT_SLEEP = "POST /sleep?level=1"
DEFAULT_WAKE = "POST /wake_up"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Hook:
    """One HTTP call of the ``hooks`` engine: ``METHOD /path?query``."""

    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Hook:
        """``"POST /sleep?level=1"`` → Hook('POST', '/sleep?level=1'); ValueError saying
        what was expected otherwise."""
        parts = text.split() if isinstance(text, str) else []
        if len(parts) != 2 or parts[0].upper() not in _METHODS or not parts[1].startswith("/"):
            raise ValueError(
                f"expected 'METHOD /path' like 'POST /sleep?level=1' (METHOD one of "
                f"{', '.join(_METHODS)}), got {text!r}"
            )
        return cls(parts[0].upper(), parts[1])

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class SuspendTarget:
    """What an engine acts on: the instance's endpoint (hooks) and the PID of its
    tree's root as Dormant sees it (cuda)."""

    name: str
    endpoint: Endpoint | None = None
    pid: int | None = None

    @classmethod
    def of(cls, name: str, instance: Instance) -> SuspendTarget:
        pid = instance.describe().get("pid")
        return cls(name, instance.endpoint, pid if isinstance(pid, int) else None)


@dataclass(frozen=True)
class Toggle:
    """One suspend or resume: which engine, how long, and what it touched."""

    engine: str
    seconds: float
    detail: str = ""


class SuspendEngine(Protocol):
    name: str

    async def suspend(self, target: SuspendTarget) -> Toggle:
        """Park the target's device memory in host RAM; raises SuspendFailed."""
        ...

    async def resume(self, target: SuspendTarget) -> Toggle:
        """Bring it back; raises ResumeFailed."""
        ...


_HOOK_HINTS = {
    404: (
        "the server has no such route: vLLM serves /sleep and /wake_up only with "
        "--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1; check the workload's hooks"
    ),
    405: "the server does not accept this method on that route; check the workload's hooks",
}


class HooksEngine:
    """Suspend through the server's own HTTP API (see the module docstring)."""

    name = "hooks"

    def __init__(
        self,
        client: httpx.AsyncClient,
        sleep: str | Hook = DEFAULT_SLEEP,
        wake: str | Hook = DEFAULT_WAKE,
        timeout: float = 120.0,
    ) -> None:
        self.client = client
        self.sleep = sleep if isinstance(sleep, Hook) else Hook.parse(sleep)
        self.wake = wake if isinstance(wake, Hook) else Hook.parse(wake)
        self.timeout = timeout

    async def _call(
        self, target: SuspendTarget, hook: Hook, error: type[SuspendFailed | ResumeFailed]
    ) -> Toggle:
        if target.endpoint is None:
            raise error(f"{target.name}: no endpoint to call {hook} on")
        url = target.endpoint.url + hook.path
        started = time.perf_counter()
        try:
            response = await self.client.request(
                hook.method,
                url,
                json={} if hook.method in ("POST", "PUT", "PATCH") else None,
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            raise error(
                f"{target.name}: {hook} did not answer within {self.timeout:g}s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise error(f"{target.name}: {hook} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        if not response.is_success:
            body = response.text.strip().replace("\n", " ")[:300]
            hint = _HOOK_HINTS.get(response.status_code, "")
            raise error(
                f"{target.name}: {hook} answered {response.status_code}: {body or '(no body)'}"
                + (f"; {hint}" if hint else "")
            )
        return Toggle(self.name, seconds, str(hook))

    async def suspend(self, target: SuspendTarget) -> Toggle:
        return await self._call(target, self.sleep, SuspendFailed)

    async def resume(self, target: SuspendTarget) -> Toggle:
        return await self._call(target, self.wake, ResumeFailed)


class CudaEngine:
    """Suspend through the CUDA driver's checkpoint API, on every CUDA process of the
    instance's tree. ``driver`` defaults to ``CudaCheckpoint()``, loaded when first
    needed (NotSupported where there is no usable NVIDIA driver).

    The driver calls block: they run in a worker thread and cannot be cancelled half
    way. Locking waits at most ``lock_timeout`` for running CUDA work; the copy itself
    is bounded by the bytes to move. A suspend goes through ``snapshots.cuda_view.park``:
    refused (the instance keeps serving) for a multi-GPU or MIG process, or when host RAM
    cannot take the device memory; failed and undone when a process of the tree still
    maps /dev/nvidia* afterwards. ``probes``: its effects (NVML, /proc), for tests."""

    name = "cuda"

    def __init__(
        self,
        driver: CudaDriver | None = None,
        lock_timeout: float = 10.0,
        probes: Probes | None = None,
    ) -> None:
        self._driver = driver
        self.lock_timeout = lock_timeout
        self.probes = probes or Probes()

    def driver(self) -> CudaDriver:
        if self._driver is None:
            try:
                self._driver = CudaCheckpoint()
            except EngineUnavailable as exc:
                raise NotSupported(f"the cuda suspend engine cannot work here: {exc}") from exc
        return self._driver

    def _tree(self, target: SuspendTarget, error: type[SuspendFailed | ResumeFailed]) -> list[int]:
        if target.pid is None:
            raise error(f"{target.name}: no process id to act on (is it a local instance?)")
        return process_tree(target.pid)

    def _suspend(self, target: SuspendTarget) -> Toggle:
        driver = self.driver()
        try:
            tree = self._tree(target, SuspendFailed)
            cuda = [p for p in tree if driver.is_cuda(p)]
            if not cuda:
                raise SuspendFailed(
                    f"{target.name}: no process of pid {target.pid}'s tree uses CUDA: nothing "
                    "to park (does the server run on the GPU?)"
                )
            timing = park(driver, tree, cuda, self.lock_timeout, self.probes)
        except EngineDumpFailed as exc:
            raise SuspendFailed(f"{target.name}: {exc}") from exc
        return Toggle(
            self.name,
            timing.total,
            f"pids {list(timing.pids)}: lock {timing.first:.3f}s, checkpoint {timing.second:.3f}s",
        )

    def _resume(self, target: SuspendTarget) -> Toggle:
        driver = self.driver()
        try:
            timing = resume_tree(driver, self._tree(target, ResumeFailed))
        except EngineRestoreFailed as exc:
            raise ResumeFailed(f"{target.name}: {exc}") from exc
        return Toggle(
            self.name,
            timing.total,
            f"pids {list(timing.pids)}: restore {timing.first:.3f}s, unlock {timing.second:.3f}s",
        )

    async def suspend(self, target: SuspendTarget) -> Toggle:
        return await asyncio.to_thread(self._suspend, target)

    async def resume(self, target: SuspendTarget) -> Toggle:
        return await asyncio.to_thread(self._resume, target)


def _hooks_engine(
    client: httpx.AsyncClient | None, hooks: Mapping[str, str], timeout: float, lock_timeout: float
) -> SuspendEngine:
    if client is None:
        raise ValueError("the hooks suspend engine needs an HTTP client")
    unknown = sorted(set(hooks) - {"sleep", "wake"})
    if unknown:
        raise ValueError(f"hooks: unknown keys {unknown}; expected 'sleep' and 'wake'")
    return HooksEngine(
        client, hooks.get("sleep", DEFAULT_SLEEP), hooks.get("wake", DEFAULT_WAKE), timeout
    )


def _cuda_engine(
    client: httpx.AsyncClient | None, hooks: Mapping[str, str], timeout: float, lock_timeout: float
) -> SuspendEngine:
    return CudaEngine(lock_timeout=lock_timeout)


ENGINES: dict[str, Callable[..., SuspendEngine] | None] = {
    "none": None,
    "cuda": _cuda_engine,
    "hooks": _hooks_engine,
}
"""``suspend:`` name -> how to build its engine (None: the workload is never suspended)."""


def make_engine(
    kind: str,
    *,
    client: httpx.AsyncClient | None = None,
    hooks: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    lock_timeout: float = 10.0,
) -> SuspendEngine | None:
    """The engine a workload's ``suspend:`` names (see ``ENGINES``): 'none' → None, 'hooks'
    (needs ``client``; ``hooks`` may give 'sleep' and 'wake'), 'cuda'. ValueError otherwise."""
    if kind not in ENGINES:
        *first, last = ENGINES
        raise ValueError(f"suspend must be {', '.join(first)} or {last}, got {kind!r}")
    build = ENGINES[kind]
    return None if build is None else build(client, dict(hooks or {}), timeout, lock_timeout)
