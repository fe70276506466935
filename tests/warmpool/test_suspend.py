"""Suspend engines and GPU hibernation without NVIDIA's binaries.

* ``hooks`` against the real reference server's sleep API (vLLM's routes), and its
  errors against real sockets.
* ``cuda``: the order of the driver calls over a process tree, and CRIU with CUDA
  processes (``CudaCriu``) with real CRIU and real PID namespaces. There is no GPU here,
  so the CUDA driver is played by a FAKE, ``RecordingDriver`` (tests/gpu/fake_driver.py):
  it follows the driver's state machine (running → locked → checkpointed and back,
  anything else refused) and keeps each process's CUDA state by its PID inside the
  namespace, as the real state lives in the process's memory and survives CRIU. The real
  driver is exercised by tests/gpu (tests/gpu/device_check.sh) on a GPU machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from snapshots import (
    CriuEngine,
    EngineDumpFailed,
    EngineRestoreFailed,
    EngineUnavailable,
    process_tree,
)
from snapshots.cuda import checkpoint_support, gpu_refusal, resume_tree, suspend_tree
from snapshots.cuda_criu import CUDA_PIDS_FILE, CudaCriu, ns_pids, without_plugins
from tests.conftest import free_port
from tests.gpu.fake_driver import RecordingDriver
from tests.servers.refproc import RefServer, refserver
from warmpool import (
    CudaEngine,
    Endpoint,
    HooksEngine,
    NotSupported,
    ResumeFailed,
    SuspendFailed,
    SuspendTarget,
    make_engine,
)
from warmpool.suspend import Hook

pytestmark = pytest.mark.anyio


# ---- the order of driver calls over a tree ---------------------------------------


def test_suspend_locks_every_cuda_process_before_checkpointing_any() -> None:
    driver = RecordingDriver(lambda pid: pid in (11, 12))
    timing = suspend_tree(driver, [10, 11, 12], lock_timeout=5)
    assert timing.pids == (11, 12)
    assert driver.calls == [("lock", 11), ("lock", 12), ("checkpoint", 11), ("checkpoint", 12)]
    assert driver.state(11) == driver.state(12) == "checkpointed"
    driver.calls.clear()
    back = resume_tree(driver, [10, 11, 12])
    assert back.pids == (11, 12)
    assert driver.calls == [("restore", 11), ("restore", 12), ("unlock", 11), ("unlock", 12)]
    assert driver.state(11) == driver.state(12) == "running"


def test_a_failed_checkpoint_undoes_everything_and_leaves_the_tree_running() -> None:
    driver = RecordingDriver(lambda pid: pid in (1, 2, 3), fail=("checkpoint", 2))
    with pytest.raises(EngineDumpFailed, match=r"out of memory.*the tree was left running"):
        suspend_tree(driver, [1, 2, 3], lock_timeout=5)
    assert driver.calls == [
        *[("lock", p) for p in (1, 2, 3)],
        ("checkpoint", 1),
        ("checkpoint", 2),
        ("restore", 1),
        *[("unlock", p) for p in (3, 2, 1)],
    ]
    assert all(driver.state(p) == "running" for p in (1, 2, 3))


def test_a_failed_lock_unlocks_what_was_locked() -> None:
    driver = RecordingDriver(lambda pid: pid in (1, 2), fail=("lock", 2))
    with pytest.raises(EngineDumpFailed, match="left running"):
        suspend_tree(driver, [1, 2], lock_timeout=5)
    assert driver.calls == [("lock", 1), ("lock", 2), ("unlock", 1)]
    assert driver.state(1) == driver.state(2) == "running"


def test_suspend_and_resume_are_safe_to_repeat() -> None:
    driver = RecordingDriver(lambda pid: pid == 7)
    suspend_tree(driver, [7], lock_timeout=5)
    suspend_tree(driver, [7], lock_timeout=5)  # already checkpointed: nothing to do
    assert driver.calls == [("lock", 7), ("checkpoint", 7)]
    resume_tree(driver, [7])
    resume_tree(driver, [7])  # running: nothing to do
    assert driver.calls[2:] == [("restore", 7), ("unlock", 7)]


def test_a_failed_restore_names_the_process_and_unlocks_the_others() -> None:
    driver = RecordingDriver(lambda pid: pid in (1, 2), fail=("restore", 1))
    suspend_tree(driver, [1, 2], lock_timeout=5)
    with pytest.raises(EngineRestoreFailed, match="restore failed for pid 1"):
        resume_tree(driver, [1, 2])
    assert driver.state(2) == "running" and driver.state(1) == "checkpointed"


def test_a_process_in_a_failed_cuda_state_is_refused() -> None:
    driver = RecordingDriver(lambda pid: pid == 4)
    driver.states[4] = "failed"
    with pytest.raises(EngineDumpFailed, match=r"state 'failed'.*restart the workload"):
        suspend_tree(driver, [4], lock_timeout=5)
    assert driver.calls == []


@pytest.mark.parametrize(
    ("gpus", "mig", "refused"),
    [
        ({1: {0}}, set(), ""),
        ({1: {0}, 2: {1}}, set(), ""),  # one GPU per process is fine, on any GPU
        ({1: set()}, set(), ""),  # NVML lists no memory for it: nothing known, nothing refused
        ({1: {0, 3}}, set(), "pid 1 holds memory on GPUs 0, 3: multi-GPU"),
        ({5: {2}}, {2}, "pid 5 runs on GPU 2, which has MIG enabled"),
        ({5: {1}}, {2}, ""),  # MIG elsewhere does not matter
    ],
)
def test_gpu_refusals_come_from_nvml_not_open_device_files(
    gpus: dict[int, set[int]], mig: set[int], refused: str
) -> None:
    """CUDA opens /dev/nvidia0..N of every GPU at initialisation: a server on one GPU of an
    8-GPU node has them all open, so only the GPUs NVML says it holds memory on count."""
    message = gpu_refusal(gpus, mig)
    if not refused:
        assert message == ""
    else:
        assert refused in message and "suspend: hooks" in message


@pytest.mark.parametrize(
    ("driver", "api", "other_gpu"),
    [("580.159.03", True, True), ("570.86.10", True, False), ("550.54", False, False)],
)
def test_checkpoint_support_by_driver_version(driver: str, api: bool, other_gpu: bool) -> None:
    support = checkpoint_support(driver)
    assert (support.api, support.other_gpu) == (api, other_gpu)
    assert driver in support.api_why
    if not api:
        assert ">= 570" in support.api_why


def test_an_unreadable_driver_version_is_no() -> None:
    assert checkpoint_support("unknown").api is False


# ---- the cuda engine on real process trees --------------------------------------


@pytest.fixture
def tree() -> Iterator[list[int]]:
    """A real process with two children: [root, child1, child2]."""
    code = (
        "import subprocess, sys\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
        " stdin=subprocess.PIPE) for _ in range(2)]\n"
        "print(*[k.pid for k in kids], flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    kids = [int(p) for p in proc.stdout.readline().split()]
    yield [proc.pid, *kids]
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


async def test_cuda_engine_acts_on_the_cuda_processes_of_the_tree(tree: list[int]) -> None:
    root, gpu_child, _ = tree
    driver = RecordingDriver(lambda pid: pid == gpu_child)
    engine = CudaEngine(driver, lock_timeout=3)
    target = SuspendTarget("m", pid=root)
    parked = await engine.suspend(target)
    assert parked.engine == "cuda" and str(gpu_child) in parked.detail
    assert driver.state(gpu_child) == "checkpointed"
    await engine.resume(target)
    assert driver.calls == [
        ("lock", gpu_child),
        ("checkpoint", gpu_child),
        ("restore", gpu_child),
        ("unlock", gpu_child),
    ]


async def test_cuda_engine_errors_are_warmpool_errors(tree: list[int]) -> None:
    root, gpu_child, _ = tree
    none = CudaEngine(RecordingDriver(lambda pid: False))
    with pytest.raises(SuspendFailed, match=r"no process of pid .* uses CUDA"):
        await none.suspend(SuspendTarget("m", pid=root))
    with pytest.raises(SuspendFailed, match="no process id"):
        await none.suspend(SuspendTarget("m", endpoint=Endpoint("127.0.0.1", 1)))
    failing = CudaEngine(
        RecordingDriver(lambda pid: pid == gpu_child, fail=("checkpoint", gpu_child))
    )
    with pytest.raises(SuspendFailed, match="left running"):
        await failing.suspend(SuspendTarget("m", pid=root))
    stuck = RecordingDriver(lambda pid: pid == gpu_child, fail=("restore", gpu_child))
    engine = CudaEngine(stuck)
    await engine.suspend(SuspendTarget("m", pid=root))
    with pytest.raises(ResumeFailed, match=f"restore failed for pid {gpu_child}"):
        await engine.resume(SuspendTarget("m", pid=root))


async def test_cuda_engine_without_a_driver_is_not_supported(tree: list[int]) -> None:
    try:
        from snapshots.cuda import CudaCheckpoint

        CudaCheckpoint()
    except EngineUnavailable:
        pass
    else:
        pytest.skip("an NVIDIA driver is present: tests/gpu covers the real engine")
    with pytest.raises(NotSupported, match="cuda suspend engine cannot work here"):
        await CudaEngine().suspend(SuspendTarget("m", pid=tree[0]))


# ---- CRIU with CUDA processes (real CRIU, real namespaces, stand-in driver) -------

_MARK = "FAKE_CUDA_PROCESS"
_NS_TREE = (  # the mark is put together at run time, so only the child carries it
    "import subprocess, sys, time\n"
    f"mark = '{_MARK[:5]}' + '{_MARK[5:]}'\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)', mark])\n"
    "time.sleep(3600)\n"
)


def _marked(pid: int) -> bool:
    try:
        return _MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _inner(pid: int) -> object:
    chain = ns_pids(pid)
    return chain[-1] if chain else None


@pytest.fixture
def ns_tree() -> Iterator[int]:
    """A tree that CRIU can dump: PID 1 of its own namespace and session, with one
    child carrying the mark that makes the stand-in driver call it a CUDA process."""
    wrapper = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "setsid", sys.executable, "-c", _NS_TREE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    root = 0
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()
        if kids and len(process_tree(int(kids[0]))) == 2:
            root = int(kids[0])
            if any(_marked(p) for p in process_tree(root)):
                break
        time.sleep(0.05)
    assert root, "the namespaced tree did not start"
    yield root
    with contextlib.suppress(ProcessLookupError):
        os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.wait(10)


def _reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@pytest.mark.criu
def test_criu_with_cuda_processes_parks_then_dumps_then_restores_and_resumes(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    gpu = next(p for p in process_tree(ns_tree) if _marked(p))
    inner_gpu = ns_pids(gpu)[-1]
    driver = RecordingDriver(_marked, key=_inner)
    engine = CudaCriu(criu, driver, plugin_dir=tmp_path / "no-plugins")
    images, work = tmp_path / "images", tmp_path / "work"

    engine.dump(ns_tree, images, work / "dump", timeout=60)
    assert driver.calls == [("lock", gpu), ("checkpoint", gpu)]
    assert json.loads((images / CUDA_PIDS_FILE).read_text()) == {"pids": [inner_gpu]}
    assert not Path(f"/proc/{ns_tree}").exists() or not process_tree(ns_tree)[1:]
    assert list((tmp_path / "no-plugins").iterdir()) == []  # -L pointed at an empty dir

    root = engine.restore(images, work / "restore", None, None, timeout=60)
    try:
        restored_gpu = next(p for p in process_tree(root) if _marked(p))
        assert ns_pids(restored_gpu)[-1] == inner_gpu and ns_pids(root)[-1] == 1
        assert driver.calls[2:] == [("restore", restored_gpu), ("unlock", restored_gpu)]
        assert driver.state(restored_gpu) == "running"
    finally:
        _reap(root)


@pytest.mark.criu
def test_lazy_resume_leaves_cuda_parked_until_asked(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    driver = RecordingDriver(_marked, key=_inner)
    engine = CudaCriu(criu, driver, plugin_dir=tmp_path / "lib", resume_on_restore=False)
    engine.dump(ns_tree, tmp_path / "images", tmp_path / "w1", timeout=60)
    root = engine.restore(tmp_path / "images", tmp_path / "w2", None, None, timeout=60)
    try:
        gpu = next(p for p in process_tree(root) if _marked(p))
        assert driver.state(gpu) == "checkpointed"
        # Later (the first request): the cuda engine resumes it like a suspended instance.
        CudaEngine(driver)._resume(SuspendTarget("m", pid=root))
        assert driver.state(gpu) == "running"
    finally:
        _reap(root)


@pytest.mark.criu
def test_a_failed_dump_gives_the_gpu_memory_back(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    gpu = next(p for p in process_tree(ns_tree) if _marked(p))
    driver = RecordingDriver(_marked, key=_inner)
    engine = CudaCriu(criu, driver, plugin_dir=tmp_path / "lib")
    with pytest.raises(EngineDumpFailed, match="criu dump"):
        engine.dump(ns_tree, tmp_path / "i", tmp_path / "w", 60, options=["--no-such-option"])
    assert driver.calls == [("lock", gpu), ("checkpoint", gpu), ("restore", gpu), ("unlock", gpu)]
    assert driver.state(gpu) == "running" and Path(f"/proc/{gpu}").exists()


@pytest.mark.criu
def test_a_tree_without_cuda_is_dumped_as_before(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    driver = RecordingDriver(lambda pid: False)
    engine = CudaCriu(criu, driver)
    engine.dump(ns_tree, tmp_path / "images", tmp_path / "w1", timeout=60)
    assert not (tmp_path / "images" / CUDA_PIDS_FILE).exists()
    assert not (tmp_path / "criu-no-plugins").exists()  # no -L either: CRIU as before
    root = engine.restore(tmp_path / "images", tmp_path / "w2", None, None, timeout=60)
    try:
        assert driver.calls == [] and len(process_tree(root)) == 2
    finally:
        _reap(root)


def _marked_processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _marked(int(p))]


def _task_states(root: int) -> set[str]:
    """The one-letter states (/proc/PID/stat) of every task of the tree."""
    states = set()
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            states.add(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


@pytest.mark.criu
def test_a_failed_cuda_resume_after_a_restore_kills_the_restored_tree(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    original = next(p for p in process_tree(ns_tree) if _marked(p))
    # FAKE driver: the restored process's CUDA restore fails (out of memory, say).
    driver = RecordingDriver(
        _marked, key=_inner, fail=lambda call, pid: call == "restore" and pid != original
    )
    engine = CudaCriu(criu, driver, plugin_dir=tmp_path / "lib")
    engine.dump(ns_tree, tmp_path / "images", tmp_path / "w1", timeout=60)
    assert _marked_processes() == []
    with pytest.raises(
        EngineRestoreFailed, match=r"out of memory.*the restored tree .* was killed"
    ):
        engine.restore(tmp_path / "images", tmp_path / "w2", None, None, timeout=60)
    deadline = time.monotonic() + 10
    while _marked_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked_processes() == [], "the restored tree must not be left behind"


@pytest.mark.criu
def test_a_cuda_tree_restored_stopped_resumes_only_once_continued(
    criu: CriuEngine, ns_tree: int, tmp_path: Path
) -> None:
    """The images can be verified while CRIU restores (as for CPU trees): with
    --leave-stopped nothing runs and CUDA stays parked until ``continue_restored``."""
    driver = RecordingDriver(_marked, key=_inner)  # FAKE driver
    engine = CudaCriu(criu, driver, plugin_dir=tmp_path / "lib")
    engine.dump(ns_tree, tmp_path / "images", tmp_path / "w1", timeout=60)
    calls = len(driver.calls)
    root = engine.restore(
        tmp_path / "images", tmp_path / "w2", None, None, 60, options=("--leave-stopped",)
    )
    try:
        gpu = next(p for p in process_tree(root) if _marked(p))
        assert _task_states(root) == {"T"}, "every task stays stopped"
        assert driver.state(gpu) == "checkpointed" and len(driver.calls) == calls
        engine.continue_restored(root)
        assert "T" not in _task_states(root)
        assert driver.calls[calls:] == [("restore", gpu), ("unlock", gpu)]
        assert driver.state(gpu) == "running"
    finally:
        _reap(root)


def test_a_cuda_process_that_exits_before_the_dump_is_an_error_not_a_crash(
    tmp_path: Path,
) -> None:
    tree = subprocess.Popen(["bash", "-c", "sleep 0.3 & wait; exec sleep 60"])
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(tree.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        (child,) = process_tree(tree.pid)[1:]

        def exits_once_found(pid: int) -> bool:  # FAKE driver: detects it, then it is gone
            if pid != child:
                return False
            while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return True

        engine = CudaCriu(cast(CriuEngine, None), RecordingDriver(exits_once_found))
        with pytest.raises(EngineDumpFailed, match=f"CUDA process {child} .* exited"):
            engine.dump(tree.pid, tmp_path / "i", tmp_path / "w", 10)
    finally:
        tree.kill()
        tree.wait(10)


def test_a_plugin_dir_with_plugins_is_refused(tmp_path: Path) -> None:
    assert without_plugins(tmp_path / "lib") == ["-L", str(tmp_path / "lib")]
    (tmp_path / "lib" / "cuda_plugin.so").write_bytes(b"")
    with pytest.raises(EngineUnavailable, match=r"holds cuda_plugin.so"):
        without_plugins(tmp_path / "lib")


# ---- hooks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hook"),
    [
        ("POST /sleep?level=1", Hook("POST", "/sleep?level=1")),
        ("post /wake_up", Hook("POST", "/wake_up")),
        ("POST /release_memory_occupation", Hook("POST", "/release_memory_occupation")),
    ],
)
def test_hook_parses(text: str, hook: Hook) -> None:
    assert Hook.parse(text) == hook and str(hook) == text.replace("post", "POST")


@pytest.mark.parametrize("bad", ["/sleep", "POST sleep", "FETCH /sleep", "POST /a /b", ""])
def test_bad_hooks_say_what_is_expected(bad: str) -> None:
    with pytest.raises(ValueError, match="expected 'METHOD /path'"):
        Hook.parse(bad)


async def test_make_engine_by_name() -> None:
    async with httpx.AsyncClient() as client:
        assert make_engine("none") is None
        assert isinstance(make_engine("cuda"), CudaEngine)
        hooks = make_engine("hooks", client=client, hooks={"sleep": "POST /release"})
        assert isinstance(hooks, HooksEngine)
        assert (str(hooks.sleep), str(hooks.wake)) == ("POST /release", "POST /wake_up")
        with pytest.raises(ValueError, match=r"unknown keys \['slep'\]"):
            make_engine("hooks", client=client, hooks={"slep": "POST /x"})
        with pytest.raises(ValueError, match="needs an HTTP client"):
            make_engine("hooks")
        with pytest.raises(ValueError, match="none, cuda or hooks"):
            make_engine("criu")


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefServer]:
    with refserver(tmp_path_factory.mktemp("hooks")) as server:
        yield server


async def test_hooks_suspend_and_resume_the_reference_server(ref: RefServer) -> None:
    prompts = ["The warm pool", "Once upon a time"]
    before = [ref.text(p) for p in prompts]
    target = SuspendTarget("ref", endpoint=ref.endpoint, pid=ref.pid)
    async with httpx.AsyncClient() as client:
        engine = HooksEngine(client)
        slept = await engine.suspend(target)
        assert (slept.engine, slept.detail) == ("hooks", "POST /sleep?level=1")
        assert ref.get("/is_sleeping") == {"is_sleeping": True}
        asleep = ref.complete(prompts[0])
        assert asleep.status_code == 503 and "sleeping" in asleep.text
        woke = await engine.resume(target)
        assert woke.detail == "POST /wake_up" and woke.seconds >= 0
    assert ref.get("/is_sleeping") == {"is_sleeping": False}
    assert [ref.text(p) for p in prompts] == before  # greedy: identical after the swap


async def test_hooks_errors_name_the_call_and_what_to_do(ref: RefServer) -> None:
    target = SuspendTarget("ref", endpoint=ref.endpoint)
    async with httpx.AsyncClient() as client:
        wrong = HooksEngine(client, sleep="POST /sleep_now", wake="GET /wake_up")
        with pytest.raises(SuspendFailed, match=r"POST /sleep_now answered 404.*no such route"):
            await wrong.suspend(target)
        with pytest.raises(ResumeFailed, match="GET /wake_up answered 405"):
            await wrong.resume(target)
        with pytest.raises(SuspendFailed, match="no endpoint"):
            await wrong.suspend(SuspendTarget("x"))
    assert ref.get("/is_sleeping") == {"is_sleeping": False}


async def test_hooks_against_nothing_and_against_silence() -> None:
    nothing = SuspendTarget("gone", endpoint=Endpoint("127.0.0.1", free_port()))
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = SuspendTarget("quiet", endpoint=Endpoint("127.0.0.1", silent.getsockname()[1]))
        async with httpx.AsyncClient() as client:
            engine = HooksEngine(client, timeout=0.5)
            with pytest.raises(SuspendFailed, match=r"gone: POST /sleep\?level=1 failed: Connect"):
                await engine.suspend(nothing)
            started = time.monotonic()
            with pytest.raises(ResumeFailed, match=r"did not answer within 0.5s"):
                await engine.resume(quiet)
            assert time.monotonic() - started < 10
