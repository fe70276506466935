"""Device accounting with real processes: PSS of a process tree, cgroup memory, PID
namespaces (NSpid), and NVML's answers attributed to our trees. The NVML queries
themselves need an NVIDIA driver: tests/gpu/test_pool_gpu.py runs them on a GPU."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshots import process_tree
from snapshots.cuda import checkpoint_support
from snapshots.cuda_criu import inner_to_outer, ns_pids
from tests.conftest import TESTS
from warmpool import DeviceUnavailable
from warmpool.device import (
    CpuDevice,
    NvidiaDevice,
    attribute,
    cgroup_memory,
    device_findings,
    memory_accounting,
    open_device,
    other_gpu_finding,
    process_cgroup,
    pss,
)

MiB = 1 << 20
ALLOCATOR = TESTS / "servers" / "allocator.py"


def _nvml_works() -> bool:
    try:
        NvidiaDevice().close()
    except DeviceUnavailable:
        return False
    return True


NO_GPU = not _nvml_works()


class Allocator:
    """A real process (tree) that allocates and touches memory when told to."""

    def __init__(self, mib: int, children: int = 0, wrap: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, str(ALLOCATOR), str(mib), str(children)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pids: list[int] = []

    def go(self) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", line
        self.pids = [int(p) for p in line[1:]]
        return self.pids

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def allocators() -> Iterator[list[Allocator]]:
    made: list[Allocator] = []
    yield made
    for a in made:
        a.close()


def _started(made: list[Allocator], mib: int, children: int = 0) -> Allocator:
    a = Allocator(mib, children)
    made.append(a)
    return a


def test_pss_of_a_process_tree_is_what_it_touched(allocators: list[Allocator]) -> None:
    base = _started(allocators, 0)
    big = _started(allocators, 96, children=2)  # 96 MiB in the parent and in each child
    (base_pid,) = base.go()
    big_pid, *kids = big.go()
    assert len(kids) == 2 and set(kids) <= set(process_tree(big_pid))
    empty = pss([base_pid])
    full = CpuDevice(8 << 30).used_by([big_pid])
    assert empty.bytes is not None and full.bytes is not None and full.source == "pss"
    # Three interpreters plus 3 x 96 MiB; take away three empty interpreters.
    extra = full.bytes - 3 * empty.bytes
    assert abs(extra - 3 * 96 * MiB) < 0.05 * 3 * 96 * MiB + 12 * MiB, extra / MiB
    alone = pss([kids[0]]).bytes
    assert alone is not None and 96 * MiB <= alone < full.bytes


def test_pss_of_several_roots_counts_each_process_once(allocators: list[Allocator]) -> None:
    a = _started(allocators, 32, children=1)
    root, kid = a.go()
    once, twice = pss([root]).bytes, pss([root, kid]).bytes
    assert once is not None and twice is not None
    assert abs(twice - once) < 2 * MiB  # the child was already in root's tree


def test_pss_of_processes_that_are_gone_is_unavailable() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gone = pss([proc.pid])
    assert gone.bytes is None and "gone" in gone.reason


def _memory_cgroup(name: str) -> Path:
    how = memory_accounting()
    parent = how.root or how.v1_root
    if parent is None:
        pytest.skip(f"no cgroup memory controller here ({how.detail})")
    group = parent / name
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {how.root}: {exc}")
    return group


def _remove_cgroup(group: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_cgroup_memory_of_an_instance(allocators: list[Allocator]) -> None:
    group = _memory_cgroup(f"dormant-test-{os.getpid()}")
    try:
        a = _started(allocators, 64)
        (group / "cgroup.procs").write_text(str(a.proc.pid))
        (pid,) = a.go()
        measured = CpuDevice(8 << 30).used_by([pid], cgroup=group)
        how = memory_accounting()
        assert measured.source == ("cgroup v2" if how.root else "cgroup v1"), measured
        assert measured.bytes is not None
        assert 64 * MiB <= measured.bytes < 64 * MiB + 48 * MiB, measured.bytes / MiB
        assert process_cgroup(pid) == group
    finally:
        for a in allocators:
            a.close()
        _remove_cgroup(group)


def test_an_unreadable_cgroup_falls_back_to_pss(
    allocators: list[Allocator], tmp_path: Path
) -> None:
    (pid,) = _started(allocators, 16).go()
    missing = cgroup_memory(tmp_path / "nope")
    assert missing.bytes is None and "memory.current" in missing.reason
    measured = CpuDevice(1 << 30).used_by([pid], cgroup=tmp_path / "nope")
    assert measured.source == "pss" and measured.bytes is not None
    assert measured.bytes >= 16 * MiB and "used PSS" in measured.reason


@pytest.mark.parametrize(
    ("lines", "v1", "detail"),
    [
        (
            ["35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"],
            Path("/sys/fs/cgroup/memory"),
            "no cgroup v2 hierarchy; the cgroup v1 memory hierarchy at /sys/fs/cgroup/memory",
        ),
        (["35 25 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu"], None, "no cgroup v2"),
        ([], None, "no cgroup v2 hierarchy)"),
    ],
)
def test_memory_accounting_reads_mountinfo(lines: list[str], v1: Path | None, detail: str) -> None:
    how = memory_accounting("\n".join(lines))
    assert (how.method, how.root, how.v1_root) == ("pss", None, v1)
    assert detail in how.detail


def test_memory_accounting_prefers_cgroup_v2_with_the_memory_controller(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2 = f"30 25 0:27 / {tmp_path} rw - cgroup2 cgroup2 rw"
    v1 = "35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"
    how = memory_accounting(f"{v2}\n{v1}")
    assert (how.method, how.root) == ("cgroup v2", tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu io pids\n")
    how = memory_accounting(f"{v2}\n{v1}")
    assert (how.method, how.root) == ("pss", None)
    assert f"cgroup v2 at {tmp_path} has no memory controller" in how.detail


def test_cpu_device_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        CpuDevice(0)
    if NO_GPU:
        with pytest.raises(ValueError, match="memory_budget is required"):
            open_device("auto")
    with pytest.raises(ValueError, match="auto, nvidia or cpu"):
        open_device("tpu")
    assert open_device("cpu", 6 << 30).total() == 6 << 30


# ---- PID namespaces --------------------------------------------------------------

_NS_TREE = (
    "import os, subprocess, sys\n"
    "kid = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
    " stdin=subprocess.PIPE)\n"
    "print(os.getpid(), kid.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def namespaced() -> Iterator[tuple[int, int, int]]:
    """A real tree in its own PID namespace: (host pid of its PID 1, inner pid of its
    child, host pid of that child)."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", _NS_TREE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line:
            pytest.skip("unshare --pid failed here (needs CAP_SYS_ADMIN)")
        inner_root, inner_kid = map(int, line)
        assert inner_root == 1
        (root,) = (
            int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        )
        outer_kid = inner_to_outer(root, [inner_kid])[inner_kid]
        yield root, inner_kid, outer_kid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_nspid_maps_a_namespace_to_our_pids(namespaced: tuple[int, int, int]) -> None:
    root, inner_kid, outer_kid = namespaced
    assert ns_pids(root) == (root, 1)
    assert ns_pids(outer_kid) == (outer_kid, inner_kid)
    assert outer_kid in process_tree(root) and outer_kid != inner_kid
    assert inner_to_outer(root, [1, inner_kid, 4000]) == {1: root, inner_kid: outer_kid}
    assert ns_pids(4_194_400) == ()  # above any pid_max: no such process


def test_nvml_figures_are_attributed_through_the_namespace(
    namespaced: tuple[int, int, int],
) -> None:
    """NVML speaks PIDs as Dormant sees them (or the host's): the child of an instance
    holds device memory; the instance's PID 1 does not."""
    root, inner_kid, outer_kid = namespaced
    trees = {pid: ns_pids(pid) for pid in process_tree(root)}
    other = os.getpid()  # a process outside the instance, also on the GPU
    got = attribute([(outer_kid, 5 << 30), (other, 7 << 30)], trees)
    assert got.bytes == 5 << 30 and got.source == "nvml"
    assert f"{outer_kid} (pid {inner_kid} inside)" in got.reason
    # Reported with no figure (containers), or 0 bytes: unavailable, with the reason.
    assert attribute([(outer_kid, None)], trees).bytes is None
    zero = attribute([(outer_kid, 0)], trees)
    assert zero.bytes is None and "0 bytes" in zero.reason
    # The driver's PIDs come from a namespace Dormant cannot see: unavailable.
    foreign = attribute([(4_194_400, 1 << 30)], trees)
    assert foreign.bytes is None and "cannot see" in foreign.reason
    # Only others' processes on the GPU: ours hold nothing there.
    assert attribute([(other, 7 << 30)], trees).bytes == 0
    assert attribute([], trees).bytes == 0


def test_cpu_device_measures_a_tree_in_its_own_namespace(
    namespaced: tuple[int, int, int],
) -> None:
    root, _, outer_kid = namespaced
    whole, kid = pss([root]).bytes, pss([outer_kid]).bytes
    assert whole is not None and kid is not None and whole > kid > 0


# ---- no driver -------------------------------------------------------------------


@pytest.mark.skipif(not NO_GPU, reason="an NVIDIA driver answers here")
def test_no_nvidia_driver_is_an_answer_not_a_crash() -> None:
    with pytest.raises(DeviceUnavailable, match="no NVIDIA driver"):
        open_device("nvidia")
    assert isinstance(open_device("auto", 1 << 30), CpuDevice)
    findings = {f.item: f for f in device_findings()}
    assert findings["GPU (NVML)"].ok is False
    assert "no NVIDIA driver" in findings["GPU (NVML)"].detail
    assert findings["memory accounting (CPU)"].detail.startswith(memory_accounting().method)


@pytest.mark.parametrize("driver", ["580.159.03", "570.86.10"])
def test_check_does_not_claim_restores_onto_another_gpu(driver: str) -> None:
    """Dormant passes the driver no restore arguments: whatever the driver allows, a process
    comes back on the GPU it left, and `dormant check` says so instead of a bare yes."""
    finding = other_gpu_finding(checkpoint_support(driver))
    assert finding.item == "restore onto another GPU"
    assert finding.detail.startswith("not used: Dormant passes the driver no restore arguments")
    assert driver in finding.detail
