"""One running copy of a workload on this machine: a process tree in its own PID namespace.

Booted instances run as ``unshare --pid --fork --kill-child setsid CMD``
(``setpriv ... setsid CMD`` when their capabilities are dropped: ``caps``): the
server is PID 1 of a fresh namespace and the leader of its own session, which is
what lets CRIU restore the same snapshot again and again (no PID collisions),
and ``--kill-child`` plus a parent-death signal mean the tree dies with Dormant
instead of being orphaned. Restored instances are children of this process
(CRIU ``--restore-sibling``) and keep the parent-death signal they were dumped with.

Without PID namespaces (not root: ``spawn(..., pid_namespace=False)``, the ``restart``
engine) the command runs directly as the leader of a session and process group of its
own; it is signalled through that group, and gets SIGTERM first whether or not it handles
it (only PID 1 of a namespace ignores what it does not handle).

stdout and stderr go to one pipe read by a thread into a bounded tail: never a
growing regular file, which CRIU would refuse to restore.

Each instance may also run in a cgroup of its own (``cgroup``): the spawned wrapper
joins it before exec, so the whole tree is in it, and a tree that outlives Dormant
(killed mid-restore, say) is ended by the next start (see ``warmpool.process.cgroup``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import warmpool.process.cgroup as cgroup
from snapshots import process_tree
from warmpool.process.privileges import wrapper as drop_capabilities
from warmpool.process.seccomp import block_io_uring
from warmpool.runtime import Endpoint, InstanceSpec

__all__ = ["OutputTail", "ProcessInstance", "adopt_restored", "join_cgroup", "spawn"]

log = logging.getLogger("dormant.warmpool")

_PR_SET_PDEATHSIG = 1
_UNSHARE_SIGNAL_BUG = "unshare: sigprocmask unblock failed"
"""util-linux 2.38's ``unshare --fork`` prints this (and exits 1) whenever its child is
killed by SIGKILL: it tries ``signal(SIGKILL, SIG_DFL)`` to re-raise the child's signal,
which the kernel refuses with EINVAL (fixed in util-linux 2.39). CRIU ends every dumped
tree with SIGKILL, so it followed every checkpoint: harmless, logged at debug level."""
_libc = ctypes.CDLL(None, use_errno=True)


class OutputTail:
    """Reads a pipe on a daemon thread; keeps the last ``lines`` lines and logs each one."""

    def __init__(self, name: str, read_fd: int, lines: int = 200) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._file = os.fdopen(read_fd, "rb", buffering=0)
        self._thread = threading.Thread(target=self._pump, name=f"output-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._file:
            buf = b""
            while chunk := self._file.read(65536):
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    self._add(raw)
                if len(buf) > 65536:  # a very long line without newline: bounded
                    self._add(buf)
                    buf = b""
            if buf:
                self._add(buf)

    def _add(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        self._lines.append(line)
        level = logging.DEBUG if line.startswith(_UNSHARE_SIGNAL_BUG) else logging.INFO
        log.log(level, "[%s] %s", self.name, line)

    def tail(self, n: int = 20) -> list[str]:
        return list(self._lines)[-n:]


def join_cgroup(group: Path | None) -> None:
    """Move the calling process into ``group`` (meant for a child before exec)."""
    if group is not None:
        fd = os.open(group / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _prepare_child(group: Path | None) -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    join_cgroup(group)
    block_io_uring()


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is neither a zombie nor dead. "Cannot tell" (too many
    open files, no memory) is not "dead": True then, and the next look decides."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        log.warning("cannot tell whether pid %d runs (%s): taken as running", pid, exc)
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X", "x")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class ProcessInstance:
    """A live (or just-dead) process tree; ``pid`` is the server, PID 1 of its namespace.
    Implements ``warmpool.runtime.Instance``."""

    def __init__(
        self,
        spec: InstanceSpec,
        pid: int,
        output: OutputTail,
        popen: subprocess.Popen[bytes] | None,
        restored_from: str | None = None,
        cgroup: Path | None = None,
        namespaced: bool = True,
    ) -> None:
        self.spec = spec
        self.pid = pid
        self.namespaced = namespaced
        """PID 1 of its own namespace; False: a process group leader (no namespace)."""
        self.fingerprint: dict[str, str] | None = None
        """What was started (``InstanceSpec.fingerprint``), recorded with its snapshots."""
        self.output = output
        self._restored_from = restored_from
        self.cgroup = cgroup
        self._popen = popen  # the `unshare` wrapper of a booted instance
        self._exit_status: int | None = None
        self.started = time.time()

    @property
    def restored_from(self) -> str | None:
        return self._restored_from

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def endpoint(self) -> Endpoint:
        """Local instances listen on loopback, on the spec's port."""
        return Endpoint("127.0.0.1", self.spec.port)

    def describe(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "port": self.spec.port,
            "cgroup": str(self.cgroup) if self.cgroup else None,
        }

    def poll(self) -> int | None:
        """None while running, else the exit status (negative: killed by that signal)."""
        if self._exit_status is not None:
            return self._exit_status
        if self._popen is not None:
            self._exit_status = self._popen.poll()
        else:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done, status = self.pid, 0
            if done:
                self._exit_status = os.waitstatus_to_exitcode(status)
        return self._exit_status

    def alive(self) -> bool:
        """Running: not exited, and the server itself is not dead (the `unshare` wrapper
        of a booted instance reaps it a moment after it dies: do not wait for that)."""
        return self.poll() is None and _running(self.pid)

    def exit_reason(self) -> str:
        code = self.poll()
        if code is None and not _running(self.pid):
            self.wait(1.0)  # the wrapper reaps a dead server a moment later: get its status
            code = self.poll()
            if code is None:
                return "died (its exit status is not known yet)"
        if code is None:
            return "running"
        lines = self.output.tail(9)
        if lines and _UNSHARE_SIGNAL_BUG in lines[-1]:
            # util-linux 2.38's unshare cannot re-raise its child's fatal signal; it
            # prints this and exits 1, so the signal number is lost.
            lines.pop()
            what = "killed by a signal (unshare could not say which)"
        else:
            what = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        tail = " | ".join(lines[-8:])
        return f"{what}; last output: {tail}" if tail else what

    def signal(self, sig: int) -> None:
        """``sig`` to the server (PID 1 of its namespace), or to its whole process group
        when it has no namespace (the tree ends with its group)."""
        with contextlib.suppress(ProcessLookupError):
            if self.namespaced:
                os.kill(self.pid, sig)
            else:
                os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the tree to be gone and reaped."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def catches(self, sig: int) -> bool:
        """Whether the server has a handler for ``sig``. As PID 1 of its namespace it
        ignores every signal it does not handle, SIGKILL excepted."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
        except OSError:
            pass
        return False

    def stop(self) -> None:
        """SIGTERM (when handled), then SIGKILL after ``stop_timeout``. Killing PID 1 of
        a namespace kills every process in it; the cgroup goes last (whatever escaped)."""
        try:
            self._terminate()
        finally:
            self.release_cgroup()

    def _terminate(self) -> None:
        if not self.alive():
            return
        if not self.namespaced or self.catches(signal.SIGTERM):
            self.signal(signal.SIGTERM)
            if self.wait(self.spec.stop_timeout):
                return
            log.warning(
                "%s: did not stop in %.0fs; killing", self.spec.name, self.spec.stop_timeout
            )
        self.signal(signal.SIGKILL)
        self.wait(5.0)

    def kill(self) -> None:
        """SIGKILL the tree at once (e.g. one restored stopped that must never run)."""
        self.signal(signal.SIGKILL)
        self.wait(5.0)
        self.release_cgroup()

    def continue_stopped(self) -> None:
        """SIGCONT every task of a tree CRIU restored with ``--leave-stopped``."""
        for pid in process_tree(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def forget(self) -> None:
        """After a checkpoint removed the tree: reap the wrapper, remove the cgroup."""
        self.wait(5.0)
        self.release_cgroup()

    def release_cgroup(self) -> None:
        """End whatever is left in the instance's cgroup and remove it."""
        if self.cgroup is not None:
            cgroup.remove(self.cgroup)
            self.cgroup = None


def spawn(
    spec: InstanceSpec,
    group: Path | None = None,
    *,
    pid_namespace: bool = True,
    caps: Sequence[str] | None = None,
) -> ProcessInstance:
    """Start ``spec.command`` as PID 1 of a new PID namespace (in cgroup ``group`` when
    given), output to a pipe. ``pid_namespace`` False: as the leader of a new session and
    process group instead (where namespaces cannot be had: not root). ``caps``: the only
    capabilities the command keeps (``setpriv`` after ``unshare``, which needs SYS_ADMIN:
    ``warmpool.process.privileges``; with ``pid_namespace`` only); None: it keeps all."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    wrap = (
        ["unshare", "--pid", "--fork", "--kill-child", *drop_capabilities(caps), "setsid"]
        if pid_namespace
        else []
    )
    try:
        popen = subprocess.Popen(
            [*wrap, *spec.command],
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,  # so that `setsid` inside does not need to fork
            preexec_fn=lambda: _prepare_child(group),
        )
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    output = OutputTail(spec.name, read_fd)
    if not pid_namespace:
        return ProcessInstance(spec, popen.pid, output, popen, cgroup=group, namespaced=False)
    deadline = time.monotonic() + 5.0
    while not (kids := _children(popen.pid)):
        if popen.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    pid = kids[0] if kids else popen.pid
    return ProcessInstance(spec, pid, output, popen, cgroup=group)


def adopt_restored(
    spec: InstanceSpec, pid: int, read_fd: int, snapshot_id: str, group: Path | None = None
) -> ProcessInstance:
    """Wrap a tree CRIU just restored as our child."""
    return ProcessInstance(
        spec, pid, OutputTail(spec.name, read_fd), None, restored_from=snapshot_id, cgroup=group
    )
