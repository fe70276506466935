"""What an instance may do as root: the capabilities its command keeps, the rest dropped.

Dormant runs as root with the capabilities CRIU needs (in a pod: SYS_ADMIN,
CHECKPOINT_RESTORE, SYS_PTRACE, NET_ADMIN and SYS_TIME, added to the runtime's defaults).
They are Dormant's, not the served program's: the wrapper chain becomes ``unshare --pid
--fork --kill-child setpriv ... setsid CMD``, where util-linux's ``setpriv`` (after
``unshare``, which needs SYS_ADMIN itself) removes every capability but ``kept(...)`` from
the bounding set and clears the inheritable and ambient sets. For uid 0 that is what takes
them out of the permitted and effective sets at the next ``execve``, for good: the bounding
set is inherited and never grows. CRIU dumps the bounding set with the other credentials and
restores it, so a restored instance lacks them too.

One of the five stays while CRIU is to checkpoint the instance: SYS_ADMIN. The tree's PID 1
hands CRIU a /proc of its PID namespace (criu/pie/parasite.c, ``get_proc_fd``): with no /proc
of its own namespace mounted, CRIU's parasite, running as that task, mounts one, and the
mount needs SYS_ADMIN in the task ("can't dump unprivileged task whose /proc doesn't belong
to it" without). Dropping it too needs a mount namespace per instance, or CRIU mounting that
/proc itself; not done yet.

``setpriv`` drops nothing, and says nothing, when it lacks CAP_SETPCAP itself: ``problem``
says so before a start, and ``held`` is how a started instance is checked.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_SET", "held", "kept", "names", "problem", "wrapper"]

DEFAULT_SET = (
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "net_bind_service",
    "net_raw",
    "sys_chroot",
    "mknod",
    "audit_write",
    "setfcap",
)
"""A container runtime's default set (containerd, CRI-O, Docker: the OCI defaults): what a
served program in a container has without anyone asking for more."""
_FOR_THE_PROGRAM = ("ipc_lock", "sys_nice")
"""Two a pod may add for the program itself, which Dormant never needs: IPC_LOCK (RDMA memory
registration, mlock beyond RLIMIT_MEMLOCK) and SYS_NICE (scheduling priorities, NUMA page
moves). Kept only where the pod (or the machine) gives them at all."""
_FOR_CRIU = ("sys_admin",)
"""What the served program's tree must hold for CRIU to dump it (see above)."""


def kept(checkpointed: bool) -> tuple[str, ...]:
    """The capabilities an instance's command keeps; every other is dropped: the ones added
    for CRIU, what else CRIU and Dormant use as root (SYS_RESOURCE, DAC_READ_SEARCH, ...) and
    the root-only ones no served program needs (SYS_MODULE, SYS_RAWIO, BPF, ...).
    ``checkpointed``: CRIU is to dump it, so SYS_ADMIN stays (see above)."""
    return DEFAULT_SET + _FOR_THE_PROGRAM + (_FOR_CRIU if checkpointed else ())


_NAMES = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
]
"""Capability names by number (include/uapi/linux/capability.h, up to Linux 5.9's 40)."""


def wrapper(keep: Sequence[str] | None) -> list[str]:
    """The ``setpriv`` words that drop every capability but ``keep`` (none: drop nothing)."""
    if keep is None:
        return []
    bounding = ",".join(["-all", *(f"+{cap}" for cap in keep)])
    return ["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--ambient-caps", "-all"]


def problem() -> str | None:
    """Why capabilities cannot be dropped here, saying what to do; None when they can."""
    if shutil.which("setpriv") is None:
        return (
            "setpriv is not installed, so the served program would keep every capability "
            "Dormant has: install util-linux's setpriv (Debian, Ubuntu: package util-linux; "
            "Alpine: setpriv)"
        )
    bounding = _status(Path("/proc/self/status")).get("CapBnd", 0)
    if not bounding >> _NAMES.index("setpcap") & 1:
        return (
            "this process lacks CAP_SETPCAP in its bounding set, so setpriv cannot drop "
            "capabilities: give it SETPCAP (a container runtime's default set has it)"
        )
    return None


def held(pid: int, keep: Sequence[str]) -> list[str]:
    """The effective capabilities of ``pid`` outside ``keep`` ('net_admin', ...); empty when
    it is gone or cannot be read."""
    try:
        effective = _status(Path(f"/proc/{pid}/status")).get("CapEff", 0)
    except OSError:
        return []
    return [name for bit, name in enumerate(names()) if effective >> bit & 1 and name not in keep]


def names() -> list[str]:
    """Capability names by bit number, as far as 64 ('cap_41' where the kernel is newer)."""
    return [*_NAMES, *(f"cap_{bit}" for bit in range(len(_NAMES), 64))]


def _status(path: Path) -> dict[str, int]:
    """The Cap* lines of a /proc status file, as integers."""
    return {
        key: int(value, 16)
        for key, _, value in (line.partition(":\t") for line in path.read_text().splitlines())
        if key.startswith("Cap")
    }
