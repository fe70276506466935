"""`dormant exec` without processes: its options, its phases, the volume lock (real flock), the
control API's auth, and the supervisor's lifecycle over the FakeRuntime (the Runtime seam's
fake) with the served port's activity scripted. The real thing, with CRIU and real servers,
is tests/integration/test_exec.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from activator.cli import main
from activator.cli.parser import build_parser
from activator.supervisor.api import create_control_app
from activator.supervisor.lifecycle import Supervisor, SupervisorSettings
from activator.supervisor.main import VolumeLock
from activator.supervisor.options import ExecOptions, UsageError
from activator.supervisor.states import (
    SERVING,
    TRANSITIONS,
    ExitCode,
    Phase,
    after_server_exit,
)
from warmpool import CheckpointFailed, FakeRuntime, InstanceSpec, RestoreFailed, StartFailed
from warmpool.process.sockets import PortActivity, TcpSocket

# -- options -----------------------------------------------------------------------------------


def options(*argv: str, cmd: tuple[str, ...] = ("srv", "--port", "{port}")) -> ExecOptions:
    args = build_parser().parse_args(["exec", *argv])
    return ExecOptions.parse(args, cmd)


def test_defaults_and_the_spec_they_make(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DORMANT_EXEC_TOKEN", raising=False)
    monkeypatch.delenv("DORMANT_SNAPSHOTS", raising=False)
    o = options()
    assert (o.port, o.control, o.on_term, o.token) == (8000, ("0.0.0.0", 8081), "checkpoint", "")
    assert (o.grace, o.drain_timeout, o.lock_timeout) == (25.0, 10.0, 40.0)
    assert o.snapshots == Path("/var/lib/dormant/snapshots")
    spec = o.spec()
    assert spec.with_port(spec.port).command == ("srv", "--port", "8000")
    assert o.term_delay == 5.0
    assert spec.checkpoint_timeout == 10.0  # --grace minus --term-delay and --drain-timeout
    assert spec.keep_snapshots == 1 and spec.suspend == "none"


def test_durations_read_as_in_the_yaml_settings() -> None:
    o = options("--grace", "2m", "--drain-timeout", "500ms", "--quiet", "0", "--lock-timeout", "0")
    assert (o.grace, o.drain_timeout, o.quiet, o.lock_timeout) == (120.0, 0.5, 0.0, 0.0)
    assert options("--grace", "30", "--start-timeout", "1h").start_timeout == 3600.0


def test_done_on_exit_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DORMANT_EXEC_DONE_ON_EXIT", raising=False)
    assert options().done_on_exit is False
    assert options("--done-on-exit").done_on_exit is True
    monkeypatch.setenv("DORMANT_EXEC_DONE_ON_EXIT", "true")
    assert options().done_on_exit is True
    monkeypatch.setenv("DORMANT_EXEC_DONE_ON_EXIT", "0")
    assert options().done_on_exit is False
    monkeypatch.setenv("DORMANT_EXEC_DONE_ON_EXIT", "maybe")
    with pytest.raises(UsageError, match="DORMANT_EXEC_DONE_ON_EXIT must be true or false"):
        options()


@pytest.mark.parametrize(
    ("status_zero", "done_on_exit", "code", "remove"),
    [
        (True, True, ExitCode.OK, True),  # a Job's command completed: its work is done
        (True, False, ExitCode.SERVER_EXITED, False),  # a stray SIGTERM to uvicorn: restart
        (False, True, ExitCode.SERVER_EXITED, False),
        (False, False, ExitCode.SERVER_EXITED, False),
    ],
)
def test_a_server_exiting_removes_snapshots_only_with_the_jobs_opt_in(
    status_zero: bool, done_on_exit: bool, code: ExitCode, remove: bool
) -> None:
    after = after_server_exit(status_zero, done_on_exit)
    assert (after.code, after.remove_snapshots) == (code, remove)
    if status_zero and not done_on_exit:
        assert "without --done-on-exit" in after.why and "snapshots kept" in after.why


def test_control_ipv6_and_hooks() -> None:
    o = options("--control", "[::1]:9000", "--suspend", "hooks", "--hook-sleep", "PUT /zz")
    assert o.control == ("::1", 9000)
    assert o.hooks == {"sleep": "PUT /zz", "wake": "POST /wake_up"}


@pytest.mark.parametrize(
    ("argv", "cmd", "says"),
    [
        ((), (), "no command: put it after --"),
        (("--port", "0"), ("x",), "--port must be 1-65535"),
        (("--control", "8081"), ("x",), "--control must be HOST:PORT"),
        (("--control", "h:8000"), ("x",), "--control and --port must differ"),
        (("--grace", "10", "--drain-timeout", "10"), ("x",), "less than --grace"),
        (("--grace", "0"), ("x",), "--grace: must be more than 0, got '0'"),
        (("--keep", "0"), ("x",), "--keep: must be between 1 and 1000000, got 0"),
        # the YAML settings' duration type and its one-line reasons (item 12)
        (("--grace", "nan"), ("x",), "--grace: expected a duration like '30s'"),
        (("--grace", "inf"), ("x",), "--grace: expected a duration like '30s'"),
        (("--quiet", "nan"), ("x",), "--quiet: expected a duration like '30s'"),
        (("--start-timeout", "nan"), ("x",), "--start-timeout: expected a duration"),
        (("--restore-timeout", "-1"), ("x",), "--restore-timeout: expected a duration"),
        (("--lock-timeout", "-5"), ("x",), "--lock-timeout: expected a duration"),
        (("--drain-timeout", "soon"), ("x",), "--drain-timeout: expected a duration"),
        (("--hook-wake", "wake"), ("x",), "--hook-wake: expected 'METHOD /path'"),
        (("--health-path", "health"), ("x",), "must start with '/'"),
        (("--name", "../up"), ("x",), "--name must be letters"),
    ],
)
def test_bad_options_say_what_is_wrong(
    argv: tuple[str, ...], cmd: tuple[str, ...], says: str
) -> None:
    with pytest.raises(UsageError) as caught:
        options(*argv, cmd=cmd)
    assert says in str(caught.value)


def test_token_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DORMANT_EXEC_TOKEN", "from-env")
    assert options().token == "from-env"
    (tmp_path / "t").write_text("s3cret\n")
    assert options("--token-file", str(tmp_path / "t")).token == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        options("--token-file", str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="cannot read"):
        options("--token-file", str(tmp_path / "missing"))


def test_cli_takes_everything_after_the_double_dash_as_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --port inside CMD belongs to CMD; dormant exec's own --port 0 is refused first
    code = main(["exec", "--port", "0", "--", "srv", "--port", "{port}", "--", "x"])
    assert code == ExitCode.USAGE
    assert "exec: --port must be 1-65535" in capsys.readouterr().err
    assert main(["exec", "--port", "9"]) == ExitCode.USAGE  # no `--`: no command
    assert "no command: put it after --" in capsys.readouterr().err
    assert main(["exec", "--grace", "nan", "--", "srv"]) == ExitCode.USAGE
    assert "exec: --grace: expected a duration like '30s'" in capsys.readouterr().err


# -- phases ------------------------------------------------------------------------------------


def test_transition_table_covers_every_phase_and_stopped_is_the_end() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.STOPPED] == frozenset()
    for phase, following in TRANSITIONS.items():
        assert following <= set(Phase), phase
        if phase is not Phase.STOPPED:
            assert following, f"{phase} leads nowhere"
    assert all(Phase.STOPPING in TRANSITIONS[p] for p in SERVING)


# -- the volume lock ---------------------------------------------------------------------------


def test_one_holder_per_volume_and_the_waiter_can_say_who(tmp_path: Path) -> None:
    first, second = VolumeLock(tmp_path), VolumeLock(tmp_path)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert second.holder().startswith(f"pid {os.getpid()} on ")
    first.release()
    assert second.try_acquire()
    second.release()
    assert VolumeLock(tmp_path).holder() == "another instance"  # released: no holder written


# -- the supervisor over the fake runtime ------------------------------------------------------

PORT = 18000


def activity(*connections: TcpSocket, listeners: tuple[TcpSocket, ...] = ()) -> PortActivity:
    return PortActivity(PORT, "sock_diag", connections, listeners, 0.0)


IDLE = activity()
IN_FLIGHT = activity(
    TcpSocket("ESTABLISHED", ("127.0.0.1", PORT), ("127.0.0.1", 5), 0, 0, 1, 900, 900, 1, 0)
)
TAKEN = activity(listeners=(TcpSocket("LISTEN", ("0.0.0.0", PORT), ("0.0.0.0", 0)),))


class Script:
    """What the kernel says about the served port, changed by the test."""

    def __init__(self, now: PortActivity = IDLE) -> None:
        self.now = now

    def __call__(self, port: int) -> PortActivity:
        assert port == PORT
        return self.now


def make(
    runtime: FakeRuntime,
    script: Script,
    client: httpx.AsyncClient,
    suspend: str = "none",
    **settings: object,
) -> Supervisor:
    spec = InstanceSpec("server", ("srv",), port=PORT, suspend=suspend)
    return Supervisor(
        runtime,
        spec,
        client,
        SupervisorSettings(quiet=0.0, **settings),  # type: ignore[arg-type]
        read_activity=script,
    )


def run(case: Callable[..., object]) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            await case(FakeRuntime(), Script(), client)  # type: ignore[misc]

    asyncio.run(go())


def test_boots_without_a_snapshot_restores_with_one() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        await sup.start()
        assert sup.phase is Phase.READY and sup.started and sup.started["how"] == "booted"
        runtime.add_snapshot("server")
        snap = runtime.add_snapshot("server")
        sup2 = make(runtime, script, client)
        runtime.live.clear()
        await sup2.start()
        assert sup2.status()["restored_from"] == snap.id
        assert sup2.reason.startswith(f"restored from {snap.id}")

    run(case)


def test_a_failed_restore_tries_the_next_snapshot_then_boots() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.add_snapshot("server")
        runtime.add_snapshot("server")
        runtime.fail_next("restore", RestoreFailed("images corrupt"))
        runtime.fail_next("restore", RestoreFailed("images corrupt"))
        sup = make(runtime, script, client, restore_attempts=2)
        await sup.start()
        assert sup.started is not None and sup.started["how"] == "booted"
        assert runtime.calls["restore"] == 2 and not runtime.snapshots["server"]
        assert sup.last_error and "restore failed, snapshot marked bad" in sup.last_error

    run(case)


def test_a_taken_port_fails_the_start_without_touching_snapshots() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.add_snapshot("server")
        script.now = TAKEN
        sup = make(runtime, script, client)
        await sup.start()
        assert sup.phase is Phase.FAILED and runtime.calls["restore"] == 0
        assert sup.last_error and "is taken by another process" in sup.last_error
        assert len(runtime.snapshots["server"]) == 1

    run(case)


def test_a_failed_boot_is_a_failed_start() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.fail_next("boot", StartFailed("exited with status 1"))
        sup = make(runtime, script, client)
        await sup.start()
        assert sup.phase is Phase.FAILED and sup.started is None
        assert await sup.terminate() == ExitCode.CHECKPOINT_FAILED

    run(case)


def test_checkpoint_refuses_while_busy_then_checkpoints_when_quiet() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        await sup.start()
        script.now = IN_FLIGHT
        with pytest.raises(Exception, match="never answered") as caught:
            await sup.checkpoint(wait=0.2)
        assert getattr(caught.value, "status", None) == 409
        assert runtime.calls["checkpoint"] == 0 and sup.phase is Phase.READY
        asyncio.get_running_loop().call_later(0.1, setattr, script, "now", IDLE)
        answer = await sup.checkpoint(wait=5)  # waits for quiet, then checkpoints
        assert answer["action"] == "checkpointed" and sup.phase is Phase.CHECKPOINTED
        assert (await sup.checkpoint())["action"] == "none"  # idempotent
        restored = await sup.restore()
        assert restored["action"] == "restored" and sup.phase is Phase.READY
        assert (await sup.restore())["action"] == "none"

    run(case)


def test_sigterm_waits_for_quiet_at_most_drain_timeout_then_checkpoints_anyway() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client, drain_timeout=0.3, grace=5.0)
        await sup.start()
        script.now = IN_FLIGHT
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await sup.terminate() == ExitCode.OK
        assert loop.time() - began >= 0.3
        assert sup.phase is Phase.CHECKPOINTED and runtime.calls["checkpoint"] == 1

    run(case)


def test_sigterm_checkpoint_failure_stops_the_server_and_exits_1() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client, grace=0.5, drain_timeout=0.1)
        await sup.start()
        runtime.fail_next("checkpoint", CheckpointFailed("criu: dump failed"))
        runtime.fail_next("checkpoint", CheckpointFailed("criu: dump failed"))
        runtime.fail_next("checkpoint", CheckpointFailed("criu: dump failed"))
        assert await sup.terminate() == ExitCode.CHECKPOINT_FAILED
        assert sup.phase is Phase.STOPPED and runtime.calls["stop"] == 1
        assert not any(i.alive() for i in runtime.live.values())
        assert sup.last_error and "criu: dump failed" in sup.last_error

    run(case)


def test_sigterm_with_on_term_stop_and_while_starting() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client, on_term="stop")
        await sup.start()
        assert await sup.terminate() == ExitCode.OK
        assert runtime.calls["checkpoint"] == 0 and runtime.calls["stop"] == 1
        runtime.latency["boot"] = 10.0
        slow = make(runtime, script, client)
        starting = asyncio.ensure_future(slow.start())
        await asyncio.sleep(0.05)
        assert slow.phase is Phase.BOOTING
        assert await slow.terminate() == ExitCode.OK  # cancels the boot
        assert slow.phase is Phase.STOPPED and starting.cancelled()
        with pytest.raises(Exception, match="terminating"):
            await slow.restore()

    run(case)


def test_without_a_checkpoint_engine_checkpoint_is_501_and_sigterm_stops() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.checkpoint_ok = False
        sup = make(runtime, script, client)
        await sup.start()
        with pytest.raises(Exception, match="cannot checkpoint here") as caught:
            await sup.checkpoint()
        assert getattr(caught.value, "status", None) == 501 and sup.phase is Phase.READY
        assert await sup.terminate() == ExitCode.CHECKPOINT_FAILED
        assert sup.phase is Phase.STOPPED and runtime.calls["stop"] == 1

    run(case)


def test_operations_are_refused_not_queued_while_one_runs() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        await sup.start()
        runtime.latency["checkpoint"] = 0.3
        first = asyncio.ensure_future(sup.checkpoint())
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="cannot checkpoint now: checkpointing"):
            await sup.checkpoint()
        await first

    run(case)


def test_suspend_is_501_without_an_engine_and_a_server_that_dies_is_noticed() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        await sup.start()
        with pytest.raises(Exception, match="suspend is off") as caught:
            await sup.suspend()
        assert getattr(caught.value, "status", None) == 501
        runtime.live["server"].crash("killed by signal 9")
        await asyncio.wait_for(sup.watch(0.01), 2)
        assert sup.died.is_set() and sup.phase is Phase.FAILED
        assert sup.last_error and "killed by signal 9" in sup.last_error

    run(case)


# -- SIGTERM's deadline is --grace: it cuts what is in the way (item 9) --------------------------


def test_sigterm_cuts_an_api_checkpoint_waiting_for_quiet() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client, grace=3.0, drain_timeout=0.3)
        await sup.start()
        script.now = IN_FLIGHT  # a request that never ends: POST /checkpoint?wait=600 waits
        waiting = asyncio.ensure_future(sup.checkpoint(wait=600))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await asyncio.wait_for(sup.terminate(), 10) == ExitCode.OK
        assert loop.time() - began < 3.0 + 1.0  # within --grace (and a margin), not 600 s
        with pytest.raises(Exception, match="SIGTERM came while waiting") as caught:
            await waiting
        assert getattr(caught.value, "status", None) == 409
        assert getattr(caught.value, "code", None) == "terminating"
        # SIGTERM's own drain wait, then the checkpoint anyway: once, by terminate
        assert runtime.calls["checkpoint"] == 1 and sup.phase is Phase.CHECKPOINTED

    run(case)


def test_sigterm_cuts_a_sleep_hook_that_never_answers_then_checkpoints() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.suspend_ok = True
        sup = make(runtime, script, client, suspend="hooks", grace=3.0, drain_timeout=0.3)
        await sup.start()
        runtime.latency["suspend"] = 600.0  # the sleep hook never answers
        suspending = asyncio.ensure_future(sup.suspend())
        await asyncio.sleep(0.1)
        assert sup.phase is Phase.SUSPENDING
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await asyncio.wait_for(sup.terminate(), 10) == ExitCode.OK
        assert loop.time() - began < 3.0 + 1.0
        with pytest.raises(Exception, match="suspend cut by SIGTERM"):
            await suspending
        assert runtime.calls["checkpoint"] == 1 and sup.phase is Phase.CHECKPOINTED

    run(case)


def test_sigterm_bounds_its_own_wake_hook_by_what_is_left() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        runtime.suspend_ok = True
        sup = make(runtime, script, client, suspend="hooks", grace=3.0, drain_timeout=0.3)
        await sup.start()
        await sup.suspend()
        runtime.latency["resume"] = 600.0  # the wake hook never answers
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await asyncio.wait_for(sup.terminate(), 10) == ExitCode.CHECKPOINT_FAILED
        assert loop.time() - began < 3.0 + 1.0
        assert sup.last_error and "what SIGTERM's --grace left" in sup.last_error
        assert runtime.calls["checkpoint"] == 0 and runtime.calls["stop"] == 1
        assert sup.phase is Phase.STOPPED

    run(case)


def test_sigterm_lets_a_dump_already_running_finish() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client, grace=3.0, drain_timeout=0.3)
        await sup.start()
        runtime.latency["checkpoint"] = 0.5
        dumping = asyncio.ensure_future(sup.checkpoint())
        await asyncio.sleep(0.1)
        assert sup.phase is Phase.CHECKPOINTING
        assert await asyncio.wait_for(sup.terminate(), 10) == ExitCode.OK
        assert (await dumping)["action"] == "checkpointed"
        assert runtime.calls["checkpoint"] == 1

    run(case)


def test_restore_while_the_served_port_is_taken_is_409_and_changes_nothing() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        await sup.start()
        await sup.checkpoint()
        script.now = TAKEN
        async with api(sup, "", "127.0.0.1") as local:
            answer = await local.post("/restore")
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert error["code"] == "port_in_use" and "POST /restore again" in error["message"]
        assert sup.phase is Phase.CHECKPOINTED and runtime.calls["restore"] == 0
        assert len(runtime.snapshots["server"]) == 1
        script.now = IDLE
        assert (await sup.restore())["action"] == "restored"

    run(case)


# -- the control API's guard -------------------------------------------------------------------


def api(sup: Supervisor, token: str, client_host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(create_control_app(sup, token), client=(client_host, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://exec")


def test_without_a_token_only_loopback_may_control() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        async with api(sup, "", "10.1.2.3") as remote, api(sup, "", "::1") as local:
            refused = await remote.get("/status")
            assert refused.status_code == 403
            assert "--token-file" in refused.json()["error"]["message"]
            assert (await local.get("/status")).json()["state"] == "waiting"
            assert (await remote.get("/healthz")).status_code == 200  # probes stay open
            ready = await remote.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "waiting"

    run(case)


def test_with_a_token_everyone_must_send_it() -> None:
    async def case(runtime: FakeRuntime, script: Script, client: httpx.AsyncClient) -> None:
        sup = make(runtime, script, client)
        async with api(sup, "s3cret", "127.0.0.1") as local:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                answer = await local.post("/checkpoint", headers=headers)
                assert answer.status_code == 401
                assert answer.json()["error"]["code"] == "unauthorized"
            good = {"Authorization": "Bearer s3cret"}
            assert (await local.get("/activity", headers=good)).json()["busy"] is False
            bad_wait = await local.post("/checkpoint?wait=soon", headers=good)
            assert bad_wait.status_code == 400 and "wait must be" in bad_wait.text
            nothing = await local.post("/checkpoint", headers=good)
            assert nothing.status_code == 409 and "nothing to checkpoint" in nothing.text
            missing = await local.get("/nope", headers=good)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    run(case)
