"""Hide io_uring from an instance, so that CRIU can checkpoint it.

CRIU cannot dump io_uring instances, and libuv (uvloop, hence uvicorn, vLLM;
Node.js) creates one for every event loop on recent kernels, whatever
UV_USE_IO_URING says. A seccomp filter that makes ``io_uring_setup`` fail with
ENOSYS is transparent: libuv falls back to plain epoll, as on any kernel
without io_uring, and nothing in the served program changes. The filter is
inherited by every descendant and carried through checkpoint and restore by CRIU.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = ["block_io_uring"]

_IO_URING_SETUP = 425  # same number on every architecture (generic syscall table)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(platform.machine())
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000

_libc = ctypes.CDLL(None, use_errno=True)


def _program() -> tuple[ctypes.Array[ctypes.c_char], bytes] | None:
    if _AUDIT_ARCH is None:
        return None
    insns = [
        (_BPF_LD_W_ABS, 0, 0, 4),  # A = seccomp_data.arch
        (_BPF_JEQ_K, 0, 3, _AUDIT_ARCH),  # other arch: allow
        (_BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
        (_BPF_JEQ_K, 0, 1, _IO_URING_SETUP),
        (_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),  # io_uring_setup -> ENOSYS
        (_BPF_RET_K, 0, 0, _RET_ALLOW),
    ]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    fprog = struct.pack("HxxxxxxP", len(insns), ctypes.addressof(filters))
    return filters, fprog


# Built once in the parent: the child, between fork and exec, only calls prctl.
_PROGRAM = _program()


def block_io_uring() -> None:
    """Install the filter in the calling process (meant for a child before exec)."""
    if _PROGRAM is None:
        return
    if os.geteuid() != 0:  # without CAP_SYS_ADMIN, seccomp needs no_new_privs
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    fprog = ctypes.create_string_buffer(_PROGRAM[1])
    _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog, 0, 0)
