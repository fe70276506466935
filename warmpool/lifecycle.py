"""The rules every owner of an instance's lifecycle applies, written once.

Two owners drive a ``Runtime``: the activator's ``Workload`` (one per workload, behind the
proxy) and ``dormant exec``'s ``Supervisor`` (PID 1's companion in a model pod). They differ
in what they tell the world (states, metrics, the control API) and agree on these rules:

1. **Restore the newest snapshot, else boot** (``restore_or_boot``): a snapshot the runtime
   cannot restore is retired by the runtime and the next newest is tried, up to
   ``attempts``; then the command boots. **Never boot over a kept snapshot**: when the
   environment refused the restore (``RestoreDeferred``: its port taken, no file
   descriptors, no space, no permission, a timeout, the store unreadable now) the snapshot
   is fine; nothing boots, and the error goes to the owner, who answers 503 with
   ``Retry-After`` and the reason.
2. **After a failed checkpoint, the survivor serves** (``survivor``): the replacement a
   ``CheckpointFailed`` names (restored from images that could not be committed), else the
   instance itself if it was never stopped; None when nothing alive is left.
3. **A failed resume stops the process** (``resume_or_stop``): an instance whose device
   memory could not come back cannot serve; it is stopped so that a restore or a boot can
   take its place.
4. **A snapshot whose restored process keeps dying is set aside** (``after_death``): an
   instance restored from snapshot S that dies within ``EARLY_DEATH_SECONDS`` of becoming
   ready counts against S; at the ``SUSPECT_AFTER``-th such death in a row S is set aside
   as suspect (``Runtime.set_aside``) and the next wake boots cold, instead of restoring
   the same crash again and again (e.g. SIGILL: a CPU feature lost across the restore).

Each owner reports the steps through ``Steps`` (three callbacks); nothing here keeps state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from warmpool.errors import CheckpointFailed, RestoreDeferred, WarmpoolError
from warmpool.runtime import Instance, InstanceSpec, Runtime, SnapshotInfo

__all__ = [
    "EARLY_DEATH_SECONDS",
    "SUSPECT_AFTER",
    "Deaths",
    "Steps",
    "after_death",
    "restore_or_boot",
    "resume_or_stop",
    "survivor",
]

log = logging.getLogger("dormant.warmpool")


@dataclass(frozen=True)
class Steps:
    """What an owner says at each step of ``restore_or_boot``."""

    restoring: Callable[[SnapshotInfo], None]
    """A restore of this snapshot begins."""
    restore_failed: Callable[[WarmpoolError], None]
    """That restore failed (the runtime has retired the snapshot)."""
    booting: Callable[[str], None]
    """No restore served: the command boots; the argument says which case."""


async def restore_or_boot(
    runtime: Runtime,
    spec: InstanceSpec,
    steps: Steps,
    *,
    attempts: int = 1,
    boot: Callable[[InstanceSpec], Awaitable[Instance]] | None = None,
) -> Instance:
    """Rule 1. Returns the running instance; a failed boot raises its ``WarmpoolError``
    (``boot`` defaults to ``runtime.boot``); RestoreDeferred when a kept snapshot could not
    be restored now (nothing was booted)."""
    why = "cold boot"
    for _ in range(max(1, attempts)):
        latest = await asyncio.to_thread(runtime.latest, spec.name)
        if latest is None:
            break
        steps.restoring(latest)
        try:
            instance = await runtime.restore(spec)
        except RestoreDeferred:
            raise  # the snapshot is fine: booting over it would lose its state
        except WarmpoolError as exc:
            steps.restore_failed(exc)
            why = "restore failed; cold boot"
            continue
        if instance is None:
            why = "no usable snapshot; cold boot"
            break
        return instance
    steps.booting(why)
    return await (boot or runtime.boot)(spec)


EARLY_DEATH_SECONDS = 30.0
"""A restored instance that dies this soon after becoming ready died of its restore."""
SUSPECT_AFTER = 2
"""Early deaths in a row after which the snapshot is set aside as suspect."""


@dataclass(frozen=True)
class Deaths:
    """The tally of rule 4: early deaths in a row of instances restored from ``snapshot``."""

    snapshot: str | None = None
    count: int = 0


def after_death(
    restored_from: str | None,
    lived: float,
    before: Deaths,
    *,
    window: float = EARLY_DEATH_SECONDS,
    limit: int = SUSPECT_AFTER,
) -> tuple[Deaths, bool]:
    """Rule 4, for an instance that died ``lived`` seconds after it became ready:
    the new tally, and whether its snapshot (``restored_from``) is to be set aside now.
    A booted instance, or one that lived longer than ``window``, clears the tally."""
    if restored_from is None or lived > window:
        return Deaths(), False
    count = before.count + 1 if before.snapshot == restored_from else 1
    if count >= limit:
        return Deaths(), True
    return Deaths(restored_from, count), False


def survivor(exc: WarmpoolError, instance: Instance) -> Instance | None:
    """Rule 2: which instance serves after ``instance``'s checkpoint failed with ``exc``."""
    serving = exc.instance if isinstance(exc, CheckpointFailed) else instance
    if serving is None:
        return None
    try:
        alive = serving.alive()
    except Exception as unsure:  # cannot tell is not dead: the next look decides
        log.warning("after a failed checkpoint, cannot tell whether it serves: %s", unsure)
        alive = True
    return serving if alive else None


async def resume_or_stop(runtime: Runtime, instance: Instance) -> WarmpoolError | None:
    """Rule 3. None when ``instance`` is serving again; else the resume's error, and the
    instance has been stopped (a failure to stop it is logged)."""
    try:
        await runtime.resume(instance)
    except Exception as exc:  # whatever the error: the instance cannot serve
        try:
            await runtime.stop(instance)
        except Exception as stop_error:
            log.warning("after a failed resume, stopping the instance failed: %s", stop_error)
        if isinstance(exc, WarmpoolError):
            return exc
        return WarmpoolError(f"resume failed: {type(exc).__name__}: {exc}")
    return None
