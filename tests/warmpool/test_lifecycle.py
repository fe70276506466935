"""The lifecycle rules both owners apply (warmpool/lifecycle.py), on the fake runtime."""

from __future__ import annotations

import asyncio

import pytest

import warmpool.lifecycle as lifecycle
from warmpool import (
    CheckpointFailed,
    FakeRuntime,
    InstanceSpec,
    RestoreDeferred,
    RestoreFailed,
    StartFailed,
)
from warmpool.errors import ResumeFailed, WarmpoolError
from warmpool.lifecycle import Steps, restore_or_boot, resume_or_stop, survivor

SPEC = InstanceSpec("m", ("serve", "{port}"))


def _recorder() -> tuple[Steps, list[str]]:
    said: list[str] = []
    steps = Steps(
        restoring=lambda snap: said.append(f"restoring {snap.id}"),
        restore_failed=lambda exc: said.append(f"failed: {exc}"),
        booting=lambda why: said.append(f"booting: {why}"),
    )
    return steps, said


@pytest.mark.parametrize(
    ("snapshots", "restore_failures", "attempts", "expect_from", "expect_said"),
    [
        (0, 0, 1, None, ["booting: cold boot"]),
        (1, 0, 1, "snap-1", ["restoring snap-1"]),
        (1, 1, 1, None, ["restoring snap-1", "failed: bad", "booting: restore failed; cold boot"]),
        # two snapshots, the newest fails: with 2 attempts the older one serves
        (2, 1, 2, "snap-1", ["restoring snap-2", "failed: bad", "restoring snap-1"]),
        # ... with 1 attempt the command boots
        (2, 1, 1, None, ["restoring snap-2", "failed: bad", "booting: restore failed; cold boot"]),
    ],
)
def test_restore_the_newest_snapshot_else_boot(
    snapshots: int,
    restore_failures: int,
    attempts: int,
    expect_from: str | None,
    expect_said: list[str],
) -> None:
    runtime = FakeRuntime()
    for _ in range(snapshots):
        runtime.add_snapshot("m")
    for _ in range(restore_failures):
        runtime.fail_next("restore", RestoreFailed("bad"))
    steps, said = _recorder()
    instance = asyncio.run(restore_or_boot(runtime, SPEC, steps, attempts=attempts))
    assert instance.alive() and instance.restored_from == expect_from
    assert said == expect_said
    assert not runtime.violations


def test_a_failed_boot_raises_and_a_custom_boot_is_used() -> None:
    runtime = FakeRuntime()
    runtime.fail_next("boot", StartFailed("exited 1"))
    steps, _ = _recorder()
    with pytest.raises(StartFailed, match="exited 1"):
        asyncio.run(restore_or_boot(runtime, SPEC, steps))
    used: list[str] = []

    async def boot(spec: InstanceSpec):  # type: ignore[no-untyped-def]
        used.append(spec.name)
        return await runtime.boot(spec)

    asyncio.run(restore_or_boot(runtime, SPEC, steps, boot=boot))
    assert used == ["m"]


def test_the_survivor_of_a_failed_checkpoint() -> None:
    runtime = FakeRuntime()

    async def case(**failure: bool) -> tuple[object, object]:
        instance = await runtime.boot(SPEC)
        runtime.fail_next("checkpoint", WarmpoolError("dump failed"), **failure)
        try:
            await runtime.checkpoint(instance)
        except CheckpointFailed as exc:
            return instance, survivor(exc, instance)
        raise AssertionError("the checkpoint did not fail")

    kept, serving = asyncio.run(case(keep_instance=True))
    assert serving is kept
    original, replacement = asyncio.run(case(replace=True))
    assert replacement is not None and replacement is not original
    assert replacement.restored_from.startswith("uncommitted-")  # type: ignore[attr-defined]
    _, nothing = asyncio.run(case(keep_instance=False))
    assert nothing is None


def test_another_error_leaves_the_instance_serving_if_alive() -> None:
    runtime = FakeRuntime()
    instance = asyncio.run(runtime.boot(SPEC))
    assert survivor(WarmpoolError("cancelled"), instance) is instance
    instance.crash()  # type: ignore[attr-defined]
    assert survivor(WarmpoolError("cancelled"), instance) is None


def test_a_failed_resume_stops_the_process() -> None:
    runtime = FakeRuntime(suspend_ok=True)

    async def run(fail: bool) -> tuple[object, WarmpoolError | None]:
        instance = await runtime.boot(SPEC)
        await runtime.suspend(instance)
        if fail:
            runtime.fail_next("resume", ResumeFailed("out of device memory"))
        return instance, await resume_or_stop(runtime, instance)

    instance, error = asyncio.run(run(fail=False))
    assert error is None and instance.alive()  # type: ignore[attr-defined]
    instance, error = asyncio.run(run(fail=True))
    assert isinstance(error, ResumeFailed) and not instance.alive()  # type: ignore[attr-defined]
    assert runtime.calls["stop"] == 1


def test_a_resume_whose_stop_fails_too_still_says_so() -> None:
    runtime = FakeRuntime(suspend_ok=True)

    async def run() -> WarmpoolError | None:
        instance = await runtime.boot(SPEC)
        runtime.fail_next("resume", ResumeFailed("gone"))
        runtime.fail_next("stop", WarmpoolError("kill failed"))
        return await resume_or_stop(runtime, instance)

    assert isinstance(asyncio.run(run()), ResumeFailed)


def test_a_restore_the_environment_refused_never_boots_over_the_snapshot() -> None:
    """Rule 1, both owners: RestoreDeferred goes to the owner; the snapshot stays, no boot."""
    runtime = FakeRuntime()
    snapshot = runtime.add_snapshot("m")
    runtime.fail_next("restore", RestoreDeferred("port 8000 is taken", retry_after=3))
    steps, said = _recorder()
    with pytest.raises(RestoreDeferred) as deferred:
        asyncio.run(restore_or_boot(runtime, SPEC, steps, attempts=3))
    assert deferred.value.snapshot_id == snapshot.id
    assert runtime.calls["boot"] == 0 and runtime.latest("m") == snapshot
    assert said == [f"restoring {snapshot.id}"]


_S = "20260101T000000-aaaa"
_T = "20260101T000100-bbbb"


@pytest.mark.parametrize(
    ("restored_from", "lived", "before", "after", "set_aside"),
    [
        # a booted instance never counts, and clears the tally
        (None, 1.0, lifecycle.Deaths(_S, 1), lifecycle.Deaths(), False),
        # the first early death after a restore of S
        (_S, 1.0, lifecycle.Deaths(), lifecycle.Deaths(_S, 1), False),
        # the second in a row: set S aside, start over
        (_S, 1.0, lifecycle.Deaths(_S, 1), lifecycle.Deaths(), True),
        # exactly at the window still counts; past it, it served: clear
        (_S, lifecycle.EARLY_DEATH_SECONDS, lifecycle.Deaths(_S, 1), lifecycle.Deaths(), True),
        (
            _S,
            lifecycle.EARLY_DEATH_SECONDS + 0.1,
            lifecycle.Deaths(_S, 1),
            lifecycle.Deaths(),
            False,
        ),
        # another snapshot's death starts its own tally
        (_T, 1.0, lifecycle.Deaths(_S, 1), lifecycle.Deaths(_T, 1), False),
    ],
)
def test_after_death(
    restored_from: str | None,
    lived: float,
    before: lifecycle.Deaths,
    after: lifecycle.Deaths,
    set_aside: bool,
) -> None:
    assert lifecycle.after_death(restored_from, lived, before) == (after, set_aside)
