"""CRIU: find it, check it, dump a process tree, restore it.

Blocking calls with timeouts; the activator runs them in a worker thread.
Only CRIU >= 4.2 is accepted: 3.17 cannot parse the vDSO of kernels >= 6.12 and
4.1 cannot dump TCP sockets on kernels >= 6.16 (see README: CRIU).

A CRIU build carried with its own shared libraries (tests/gpu/prepare_carry.sh) names
their directory in ``DORMANT_CRIU_LIBRARY_PATH``: it is put on ``LD_LIBRARY_PATH`` for
criu alone (``criu_env``), never for Dormant or the servers it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapshots.errors import EngineDumpFailed, EngineRestoreFailed, EngineUnavailable

__all__ = [
    "CONTAINER_CHECK_ERRORS",
    "CRIU_LIBRARY_PATH",
    "CUDA_DUMP_OPTIONS",
    "CUDA_RESTORE_OPTIONS",
    "MIN_VERSION",
    "CriuEngine",
    "CriuInfo",
    "check_passes",
    "criu_env",
    "find_criu",
    "kill_leftovers",
    "probe_criu",
]

MIN_VERSION = (4, 2)
_VERSION_RE = re.compile(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?")
# Printed on every run on these machines (root without CAP_SYS_RESOURCE) and harmless.
_HARMLESS = ("RLIMIT_NOFILE",)
# `criu check` errors that every unprivileged container shows and that no Dormant checkpoint
# depends on (measured in a real pod, tests/kube/test_realnode.py): the runtime gives the
# container no /dev/net/tun (Dormant never checkpoints tun devices), and mounts /proc/sys
# read-only (CRIU restores PIDs with clone3(set_tid), never through ns_last_pid, on the
# kernels CRIU >= 4.2 supports). A check whose only errors are these passes.
CONTAINER_CHECK_ERRORS = (
    re.compile(r"tun: Unable to create tun"),
    re.compile(r"sys/kernel/ns_last_pid sysctl is inaccessible"),
)

CUDA_DUMP_OPTIONS = ("--link-remap", "--ext-unix-sk", "--ghost-limit", "512M")
"""Extra dump options for trees with CUDA processes (their device memory already parked
in host RAM by the driver's checkpoint API): CUDA keeps unlinked files open
(``--link-remap``), has unix sockets to peers outside the tree (``--ext-unix-sk``) and
deleted files larger than CRIU's 1 MiB default ghost limit. ``--file-locks`` is always on."""
CUDA_RESTORE_OPTIONS = ("--ext-unix-sk",)
"""Extra restore options matching ``CUDA_DUMP_OPTIONS``."""


@dataclass(frozen=True)
class CriuInfo:
    """What we know about one criu binary."""

    path: Path
    version: tuple[int, ...]
    check_ok: bool
    check_output: str

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def usable(self) -> bool:
        return self.version >= MIN_VERSION and self.check_ok

    def why_not(self) -> str:
        """Empty when usable, else what is wrong and what to do."""
        if self.version < MIN_VERSION:
            return (
                f"criu {self.version_text} at {self.path} is too old for this kernel; "
                f"install CRIU >= {'.'.join(map(str, MIN_VERSION))} (`make setup` builds one)"
            )
        if not self.check_ok:
            return f"`{self.path} check` failed: {self.check_output.strip()[-300:]}"
        return ""


CRIU_LIBRARY_PATH = "DORMANT_CRIU_LIBRARY_PATH"
"""Environment variable: a directory of shared libraries for criu alone."""


def criu_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to run criu with: ``environ`` (default os.environ) with
    $DORMANT_CRIU_LIBRARY_PATH first on LD_LIBRARY_PATH; None (inherit) when unset."""
    env = dict(os.environ if environ is None else environ)
    libs = env.get(CRIU_LIBRARY_PATH)
    if not libs:
        return None
    rest = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{libs}:{rest}" if rest else libs
    return env


def find_criu(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The criu to use: ``explicit``, else $DORMANT_CRIU, else next to this Python
    (where `make setup` links it), else PATH."""
    for candidate in (explicit, os.environ.get("DORMANT_CRIU")):
        if candidate:
            return Path(candidate)
    beside = Path(sys.executable).parent / "criu"
    if beside.exists():
        return beside
    found = shutil.which("criu")
    return Path(found) if found else None


def check_passes(returncode: int, output: str) -> bool:
    """Whether `criu check` passed: exit 0, or its only errors are ``CONTAINER_CHECK_ERRORS``."""
    if returncode == 0:
        return True
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return bool(errors) and all(
        any(pattern.search(line) for pattern in CONTAINER_CHECK_ERRORS) for line in errors
    )


def probe_criu(path: Path, timeout: float = 30.0) -> CriuInfo:
    """Run ``criu --version`` and ``criu check``."""
    try:
        out = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=criu_env(),
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"cannot run {path}: {exc}") from exc
    match = _VERSION_RE.search(out)
    if not match:
        raise EngineUnavailable(f"{path} --version printed no version: {out.strip()[:200]!r}")
    version = tuple(int(g) for g in match.groups() if g is not None)
    try:
        check = subprocess.run(
            [str(path), "check"], capture_output=True, text=True, timeout=timeout, env=criu_env()
        )
        check_out = check.stdout + check.stderr
        check_ok = check_passes(check.returncode, check_out)
    except (OSError, subprocess.SubprocessError) as exc:
        check_ok, check_out = False, str(exc)
    return CriuInfo(path, version, check_ok, check_out)


_libc = ctypes.CDLL(None, use_errno=True)

PROC_MOUNTPOINT = "proc.crtools"
"""What CRIU's parasite makes in the dumped root task's working directory (see ``_cwd_guard``)."""


@contextlib.contextmanager
def _cwd_guard(pid: int, deadline: float) -> Iterator[None]:
    """Hold the dumped root task's working directory for the dump, cleared of a stale
    ``proc.crtools``.

    Our instances have a PID namespace of their own but the host's /proc, so CRIU's parasite
    (criu/pie/parasite.c, ``get_proc_fd``) ``mkdir``s ``proc.crtools`` *in the root task's
    current directory*, mounts a proc there and removes it again. Two dumps at once of
    tasks sharing a working directory, or a directory a killed dump left, fail with EEXIST
    ("Can't create a directory (-17)"). So: an exclusive ``flock`` on that directory itself
    (every dump, from any Dormant, of a task there waits its turn, bounded by ``deadline``),
    and an empty ``proc.crtools`` left there is removed first. Anything else by that name
    (a mount point, a directory with content, a file) is never touched: EngineDumpFailed
    says what to do. A task that is already gone yields without a lock (the dump fails)."""
    try:
        fd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        where = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        where = f"the working directory of pid {pid}"
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EngineDumpFailed(
                        f"criu dump of pid {pid}: another dump of a task in {where} did not "
                        "end in time (dumps of tasks sharing a working directory take turns)"
                    ) from None
                time.sleep(0.02)
        _clear_stale_mountpoint(fd, where)
        yield
    finally:
        os.close(fd)  # releases the flock


def _clear_stale_mountpoint(cwd_fd: int, where: str) -> None:
    """Remove ``proc.crtools`` from the directory ``cwd_fd`` if it is an empty directory on
    the same filesystem (what a killed dump leaves); EngineDumpFailed if something else is
    there. ``rmdir`` itself refuses mount points and directories with content."""
    path = f"{where}/{PROC_MOUNTPOINT}"
    try:
        st = os.lstat(PROC_MOUNTPOINT, dir_fd=cwd_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EngineDumpFailed(f"cannot examine {path}: {exc.strerror or exc}") from exc
    problem = ""
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_dev != os.fstat(cwd_fd).st_dev:
        problem = "is a mount point (a proc a killed criu mounted?)"
    else:
        try:
            os.rmdir(PROC_MOUNTPOINT, dir_fd=cwd_fd)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            problem = {errno.EBUSY: "is a mount point", errno.ENOTEMPTY: "is not empty"}.get(
                exc.errno or 0, f"cannot be removed ({exc.strerror or exc})"
            )
    raise EngineDumpFailed(
        f"{path} {problem}: CRIU needs that name free in the working directory of the task "
        f"it dumps; look at it, then remove it (`umount {path}` if it is a mount, then "
        f"`rmdir {path}`), or set the workload's cwd elsewhere"
    )


def _die_with_parent(cgroup: Path | None = None) -> None:  # in the child, before exec
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if cgroup is not None:  # what criu restores is forked by it, so lands in its cgroup
        fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


RUNNING_MARKER = "criu.running"


def kill_leftovers(root: Path) -> list[int]:
    """End criu processes (and the helpers they forked) that a killed Dormant left
    behind, found by the markers under ``root``; returns the pids signalled."""
    killed = []
    for marker in root.rglob(RUNNING_MARKER):
        try:
            pgid = int(marker.read_text().strip())
        except (OSError, ValueError):
            marker.unlink(missing_ok=True)
            continue
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and b"criu" in cmdline.split(b"\0", 1)[0]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
        marker.unlink(missing_ok=True)
    return killed


_HINTS = {
    "ctty inheritance detected": (
        "a process in a terminal session holds /dev/tty open (an interactive sh/dash does, "
        "and so do password prompts such as Python's getpass; vim and less do not); CRIU "
        "cannot checkpoint that: end it or close the terminal, or use bash as the terminal "
        "shell (`find /proc/[0-9]*/fd -lname /dev/tty` shows which process holds it)"
    ),
}
"""What to do about CRIU errors a user can cause and fix, by a substring of the error."""


def _log_errors(log: Path, limit: int = 6) -> str:
    """The last error lines of a CRIU log, then what to do about any error known here."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no criu log)"
    errors = [ln for ln in lines if "Error" in ln and not any(h in ln for h in _HARMLESS)]
    text = " | ".join((errors or lines)[-limit:]).strip()
    hints = [hint for known, hint in _HINTS.items() if any(known in ln for ln in errors)]
    return "; ".join([text, *hints])


class CriuEngine:
    """Checkpoint and restore a process tree with CRIU.

    The tree's root must be the init of its own PID namespace (the local runtime
    starts every instance that way): that is what lets one snapshot be restored
    again and again without PID collisions.
    """

    name = "criu"

    def __init__(self, info: CriuInfo) -> None:
        if not info.usable:
            raise EngineUnavailable(info.why_not())
        self.info = info

    @property
    def version(self) -> str:
        return self.info.version_text

    def _run(
        self,
        args: list[str],
        work: Path,
        timeout: float,
        pass_fds: tuple[int, ...] = (),
        cgroup: Path | None = None,
    ) -> None:
        """Run criu in a process group of its own, marked in ``work`` while it runs.

        criu dies with Dormant (parent-death signal), but helpers it forks do not
        inherit that; if Dormant is killed mid-run they are left, stopped. The marker
        lets the next start find and end exactly that group (``kill_leftovers``).
        """
        proc = subprocess.Popen(
            [str(self.info.path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=pass_fds,
            env=criu_env(),
            preexec_fn=lambda: _die_with_parent(cgroup),
            start_new_session=True,
        )
        marker = work / RUNNING_MARKER
        marker.write_text(str(proc.pid))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            marker.unlink(missing_ok=True)
        if code != 0:
            raise subprocess.CalledProcessError(code, args)

    def dump(
        self, pid: int, images: Path, work: Path, timeout: float, options: Sequence[str] = ()
    ) -> float:
        """Checkpoint the tree rooted at ``pid`` into ``images``; the tree is gone afterwards.

        Connections must already be drained: established TCP sockets are closed
        (``--tcp-close``) and listening sockets are restored on the same port.
        ``options`` are appended to criu's arguments (e.g. ``-L DIR`` and
        ``CUDA_DUMP_OPTIONS`` for CUDA trees). Returns the seconds the dump took.
        """
        work.mkdir(parents=True, exist_ok=True)
        images.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            with _cwd_guard(pid, started + timeout):
                self._run(
                    [
                        "dump",
                        "-t",
                        str(pid),
                        "-D",
                        str(images),
                        "--work-dir",
                        str(work),
                        "-o",
                        "dump.log",
                        "-v2",
                        "--tcp-close",
                        "--file-locks",
                        *options,
                    ],
                    work,
                    max(started + timeout - time.monotonic(), 0.0),  # the lock waited within it
                )
        except subprocess.TimeoutExpired as exc:
            raise EngineDumpFailed(
                f"criu dump of pid {pid} timed out after {timeout:.0f}s"
            ) from exc
        except subprocess.CalledProcessError as exc:
            raise EngineDumpFailed(
                f"criu dump of pid {pid} failed (exit {exc.returncode}): "
                f"{_log_errors(work / 'dump.log')}"
            ) from exc
        return time.monotonic() - started

    def restore(
        self,
        images: Path,
        work: Path,
        pipe_fd: int | None,
        pipe_inode: str | None,
        timeout: float,
        cgroup: Path | None = None,
        options: Sequence[str] = (),
    ) -> int:
        """Restore the tree from ``images`` as a child of this process; returns its root pid.

        ``pipe_fd`` (a fresh pipe's write end) replaces the dumped stdout/stderr pipe
        ``pipe_inode``, so the restored server writes to a reader we own. With ``cgroup``
        (a cgroup v2 directory) criu runs in it, so the tree it restores is in it too;
        the cgroups recorded in the images are ignored. ``options`` are appended to
        criu's arguments (``-L DIR`` and ``CUDA_RESTORE_OPTIONS`` for CUDA trees).
        """
        work.mkdir(parents=True, exist_ok=True)
        pidfile = work / "restored.pid"
        pidfile.unlink(missing_ok=True)
        args = [
            "restore",
            "-D",
            str(images),
            "--work-dir",
            str(work),
            "-o",
            "restore.log",
            "-v2",
            "--tcp-close",
            "--file-locks",
            "--restore-detached",
            "--restore-sibling",
            "--pidfile",
            str(pidfile),
        ]
        if cgroup is not None:
            args.append("--manage-cgroups=ignore")
        args += options
        fds: tuple[int, ...] = ()
        if pipe_fd is not None and pipe_inode:
            args += ["--inherit-fd", f"fd[{pipe_fd}]:{pipe_inode}"]
            fds = (pipe_fd,)
        try:
            self._run(args, work, timeout, fds, cgroup)
            return int(pidfile.read_text().strip())
        except subprocess.TimeoutExpired as exc:
            raise EngineRestoreFailed(f"criu restore timed out after {timeout:.0f}s") from exc
        except subprocess.CalledProcessError as exc:
            raise EngineRestoreFailed(
                f"criu restore failed (exit {exc.returncode}): {_log_errors(work / 'restore.log')}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise EngineRestoreFailed(f"criu restore left no pid file: {exc}") from exc
