"""The served port's sockets, read from the kernel: who is connected, and what moved when.

``dormant exec`` is not in the data path, so it cannot count requests. It asks the kernel
instead, for the TCP sockets whose local port is the served port (the server's side of each
connection), in the network namespace it shares with the server:

* **sock_diag** (``NETLINK_SOCK_DIAG``, ``inet_diag_req_v2`` with ``INET_DIAG_INFO``): state,
  bytes queued each way (``idiag_rqueue``: received, not yet read by the server;
  ``idiag_wqueue``: written by the server, not yet acknowledged by the client) and, from
  ``struct tcp_info``, milliseconds since data was last received and sent
  (``tcpi_last_data_recv``, ``tcpi_last_data_sent``) and the segments with data each way
  (``tcpi_data_segs_in``, ``tcpi_data_segs_out``).
* **/proc/net/tcp{,6}**, where sock_diag is unavailable (some sandboxes): the same sockets
  and queues, without the times.

Connections made by the calling process itself (``own_pid``: the supervisor's health checks)
are left out: their client side is one of that process's sockets. What the figures mean (is
a request in flight?) is ``warmpool.process.quiet``'s. Reading fails only with ``NotSupported``
(neither source readable).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from warmpool.errors import NotSupported

__all__ = [
    "BUSY_STATES",
    "PortActivity",
    "TcpSocket",
    "build_diag_request",
    "parse_diag_messages",
    "parse_proc_net_tcp",
    "port_activity",
    "read_sockets",
    "served_side",
    "tree_listeners",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
INET_DIAG_INFO = 2

STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
_STATE_NUMBERS = {name: number for number, name in STATE_NAMES.items()}
BUSY_STATES = ("ESTABLISHED", "SYN_RECV", "CLOSE_WAIT")
"""Connection states that can carry a request in flight (CLOSE_WAIT: the client sent its
request and closed its side; the server may still be answering)."""
_READ_STATES = (*BUSY_STATES, "LISTEN")

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16sI8s")  # sport, dport (big-endian), src, dst, if, cookie
_DIAG_MSG = struct.Struct("=BBBB48sIIIII")  # family, state, timer, retrans, id, expires,
# rqueue, wqueue, uid, inode
_RTATTR = struct.Struct("=HH")
_TCPI_TIMES = struct.Struct("=IIII")  # last_data_sent, last_ack_sent, last_data_recv, last_ack_recv
_TCPI_TIMES_OFFSET = 44  # after 8 bytes of u8 fields and 9 u32 (rto ... fackets)
_TCPI_DATA_SEGS = struct.Struct("=II")  # tcpi_data_segs_in, tcpi_data_segs_out (Linux >= 4.6)
_TCPI_DATA_SEGS_OFFSET = 152
_MAX_DUMP_BYTES = 64 << 20  # a bound on one dump (about 200k sockets)


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket as the kernel reports it. Addresses are text (IPv4-mapped IPv6
    addresses as plain IPv4); ``last_*_ms`` are None when the source has no times."""

    state: str
    local: tuple[str, int]
    remote: tuple[str, int]
    rqueue: int = 0
    wqueue: int = 0
    inode: int = 0
    last_recv_ms: int | None = None
    last_sent_ms: int | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    """Segments with data received and sent (sock_diag on Linux >= 4.6)."""


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw[:16])
    return str(address.ipv4_mapped or address)


# -- sock_diag ---------------------------------------------------------------------------------


def build_diag_request(family: int, states: Iterable[str] = _READ_STATES, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for every TCP socket of ``family`` in ``states``,
    asking for ``struct tcp_info``."""
    mask = 0
    for name in states:
        mask |= 1 << _STATE_NUMBERS[name]
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), mask)
    body += _SOCKID.pack(0, 0, b"", b"", 0, b"")
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def _tcp_info(payload: bytes) -> dict[str, int]:
    """The fields the quiet rule uses, from a ``struct tcp_info`` (those it is long enough
    to hold: older kernels send a shorter one)."""
    found: dict[str, int] = {}
    if len(payload) >= _TCPI_TIMES_OFFSET + _TCPI_TIMES.size:
        sent, _ack_sent, recv, _ack_recv = _TCPI_TIMES.unpack_from(payload, _TCPI_TIMES_OFFSET)
        found.update(last_recv_ms=recv, last_sent_ms=sent)
    if len(payload) >= _TCPI_DATA_SEGS_OFFSET + _TCPI_DATA_SEGS.size:
        segs_in, segs_out = _TCPI_DATA_SEGS.unpack_from(payload, _TCPI_DATA_SEGS_OFFSET)
        found.update(data_segs_in=segs_in, data_segs_out=segs_out)
    return found


def _diag_socket(message: bytes) -> TcpSocket:
    family, state, _timer, _retrans, sockid, _expires, rqueue, wqueue, _uid, inode = (
        _DIAG_MSG.unpack_from(message)
    )
    sport, dport, src, dst, _if, _cookie = _SOCKID.unpack(sockid)
    info: dict[str, int] = {}
    offset = _DIAG_MSG.size
    while offset + _RTATTR.size <= len(message):
        length, kind = _RTATTR.unpack_from(message, offset)
        if length < _RTATTR.size:
            break
        if kind == INET_DIAG_INFO:
            info = _tcp_info(message[offset + _RTATTR.size : offset + length])
        offset += (length + 3) & ~3
    return TcpSocket(
        STATE_NAMES.get(state, str(state)),
        (_address(family, src), sport),
        (_address(family, dst), dport),
        rqueue,
        wqueue,
        inode,
        **info,
    )


def parse_diag_messages(data: bytes) -> tuple[list[TcpSocket], bool]:
    """The sockets in one netlink read of a sock_diag dump, and whether the dump is done.
    Raises OSError for an NLMSG_ERROR answer (e.g. EINVAL from a kernel without the family)."""
    found: list[TcpSocket] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise OSError(errno.EPROTO, f"truncated netlink message ({length} bytes)")
        body = data[offset + _NLMSGHDR.size : offset + length]
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EPROTO
            if code == 0:  # an acknowledgement, not an error
                offset += (length + 3) & ~3
                continue
            raise OSError(code, f"sock_diag: {os.strerror(code)}")
        if kind == SOCK_DIAG_BY_FAMILY and len(body) >= _DIAG_MSG.size:
            found.append(_diag_socket(body))
        offset += (length + 3) & ~3
    return found, False


def _diag_dump(family: int, timeout: float = 2.0) -> list[TcpSocket]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(timeout)
        nl.send(build_diag_request(family))
        found: list[TcpSocket] = []
        total = 0
        while True:
            data = nl.recv(1 << 16)
            total += len(data)
            if not data or total > _MAX_DUMP_BYTES:
                raise OSError(errno.EMSGSIZE, "sock_diag dump ended early or is too large")
            sockets, done = parse_diag_messages(data)
            found += sockets
            if done:
                return found


# -- /proc/net/tcp -----------------------------------------------------------------------------


def _proc_address(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word of the address in host byte order
    words = b"".join(
        int.from_bytes(raw[i : i + 4], "big").to_bytes(4, sys.byteorder)
        for i in range(0, len(raw), 4)
    )
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return _address(family, words), int(port, 16)


def parse_proc_net_tcp(text: str) -> list[TcpSocket]:
    """The sockets of a ``/proc/net/tcp`` or ``/proc/net/tcp6`` file (no times)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        tx, rx = (int(x, 16) for x in fields[4].split(":"))
        found.append(
            TcpSocket(
                STATE_NAMES.get(int(fields[3], 16), fields[3]),
                _proc_address(fields[1]),
                _proc_address(fields[2]),
                rqueue=rx,
                wqueue=tx,
                inode=int(fields[9]),
            )
        )
    return found


def _proc_dump(root: Path = Path("/proc/net")) -> list[TcpSocket]:
    found: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            found += parse_proc_net_tcp((root / name).read_text())
        except FileNotFoundError:  # no IPv6 here
            continue
    return [s for s in found if s.state in _READ_STATES]


def read_sockets(use_diag: bool = True) -> tuple[list[TcpSocket], str]:
    """Every TCP socket of this network namespace that can carry or accept a request,
    and the source ('sock_diag' or 'proc'; ``use_diag`` False: /proc only); NotSupported
    when neither can be read."""
    try:
        if not use_diag:
            raise OSError(errno.ENOPROTOOPT, "not asked for")
        return _diag_dump(socket.AF_INET) + _diag_dump(socket.AF_INET6), "sock_diag"
    except OSError as diag_error:
        try:
            return _proc_dump(), "proc"
        except OSError as exc:
            raise NotSupported(
                f"cannot read this network namespace's TCP sockets: sock_diag: {diag_error}; "
                f"/proc/net/tcp: {exc}"
            ) from exc


def tree_listeners(pids: Iterable[int], use_diag: bool = True) -> list[TcpSocket]:
    """The LISTEN sockets the processes ``pids`` hold (by their socket inodes), in this
    network namespace. Blocking; NotSupported when the sockets cannot be read."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _own_inodes(pid)
    if not inodes:
        return []
    sockets, _ = read_sockets(use_diag)
    return [s for s in sockets if s.state == "LISTEN" and s.inode in inodes]


def _own_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


# -- the served port ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortActivity:
    """The served port at one moment: the server's side of each connection (the caller's
    own connections left out), and its listening sockets."""

    port: int
    source: str
    """'sock_diag' (with activity times) or 'proc' (without)."""
    connections: tuple[TcpSocket, ...]
    listeners: tuple[TcpSocket, ...]
    at: float
    """time.monotonic() when read."""

    @property
    def has_times(self) -> bool:
        return self.source == "sock_diag"


def served_side(
    sockets: Sequence[TcpSocket], port: int, own: Collection[int] = ()
) -> tuple[list[TcpSocket], list[TcpSocket]]:
    """Pure: (connections, listeners) on local ``port``, leaving out connections whose
    client side is one of the ``own`` socket inodes."""
    own_clients = {s.local for s in sockets if s.inode in own and s.remote[1] == port}
    connections = [
        s
        for s in sockets
        if s.local[1] == port and s.state in BUSY_STATES and s.remote not in own_clients
    ]
    listeners = [s for s in sockets if s.local[1] == port and s.state == "LISTEN"]
    return connections, listeners


def port_activity(port: int, own_pid: int | None = None, use_diag: bool = True) -> PortActivity:
    """Read the served ``port`` now. Connections made by ``own_pid`` (default: this process)
    are left out; pass 0 to keep them all. Blocking (a few ms): call it from a thread."""
    sockets, source = read_sockets(use_diag)
    pid = os.getpid() if own_pid is None else own_pid
    own = _own_inodes(pid) if pid else set()
    connections, listeners = served_side(sockets, port, own)
    return PortActivity(port, source, tuple(connections), tuple(listeners), time.monotonic())
