"""The served port's sockets: parsing recorded kernel answers, the quiet rule as a table, and
real TCP connections on loopback read back through sock_diag and /proc/net/tcp."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from warmpool.process.quiet import bind_problem, busy_reasons, last_data_age
from warmpool.process.sockets import (
    TcpSocket,
    build_diag_request,
    parse_diag_messages,
    parse_proc_net_tcp,
    port_activity,
    served_side,
)

# One sock_diag answer recorded on this machine (Linux 6.18, x86-64): the server side of
# 127.0.0.1:60003 <- 127.0.0.1:58716 after one request (received 500 ms ago) and its answer
# (sent 200 ms ago), with INET_DIAG_INFO; then NLMSG_DONE.
RECORDED_DIAG = bytes.fromhex(
    "9801000014000200010000008f18000002010000ea63e55c7f000001000000000000000000000000"
    "7f00000100000000000000000000000000000000323f000000000000000000000000000000000000"
    "00000000ee990700050008000000000008000f00000000000c001500010000000000000006001600"
    "520000001c010200010000000007aa01e01c0300409c000000800000180200000000000000000000"
    "000000000000000000000000c800000000000000f4010000c8000000ffff0000cbff000014000000"
    "0a000000ffffff7f0b000000cbff00000300000000000000cbff0000000000007324c2790b000000"
    "ffffffffffffffff1300000000000000120000000000000002000000040000000000000013000000"
    "01000000010000000000093d00000000000000000000000000000000000000000000000000000000"
    "02000000000000001300000000000000000000000000000000000000000000000000000000000100"
    "00000100000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000001400000003000200010000008f18000000000000"
)

RECORDED_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   1: 0100007F:EA63 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 498156 1 0000000029027d40 100 0 0 10 0
 151: 0100007F:EA63 0100007F:E55C 01 00000000:00000012 00:00000000 00000000     0        0 498158 1 000000006f05237a 20 4 30 11 -1
"""  # noqa: E501  (the kernel's line; rx_queue edited to 0x12 to show a queued request)

RECORDED_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:B4BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 498179 1 000000003a877452 100 0 0 10 0
   1: 00000000000000000000000001000000:95BD 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 498178 1 00000000dd6c7b83 100 0 0 10 0
"""  # noqa: E501


def test_the_request_asks_for_tcp_info_of_tcp_sockets_in_the_given_states() -> None:
    request = build_diag_request(socket.AF_INET6, ("ESTABLISHED", "LISTEN"), seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, seq) == (len(request), 20, 7) and len(request) == 16 + 56
    assert flags == 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
    family, protocol, ext, states = struct.unpack_from("=BBBxI", request, 16)
    assert (family, protocol) == (socket.AF_INET6, socket.IPPROTO_TCP)
    assert ext == 1 << (2 - 1)  # INET_DIAG_INFO
    assert states == (1 << 1) | (1 << 10)


def test_a_recorded_sock_diag_answer_parses() -> None:
    sockets, done = parse_diag_messages(RECORDED_DIAG)
    assert done
    assert sockets == [
        TcpSocket(
            "ESTABLISHED",
            ("127.0.0.1", 60003),
            ("127.0.0.1", 58716),
            rqueue=0,
            wqueue=0,
            inode=498158,
            last_recv_ms=500,
            last_sent_ms=200,
            data_segs_in=1,
            data_segs_out=1,
        )
    ]


def test_a_dump_split_across_reads_is_not_done_until_nlmsg_done() -> None:
    first = RECORDED_DIAG[:408]
    assert parse_diag_messages(first)[1] is False
    assert parse_diag_messages(first)[0][0].inode == 498158


def test_an_error_answer_raises_oserror_with_its_errno() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -22) + bytes(16)
    with pytest.raises(OSError, match="Invalid argument") as caught:
        parse_diag_messages(error)
    assert caught.value.errno == 22


def test_a_truncated_message_is_an_error_not_a_guess() -> None:
    with pytest.raises(OSError, match="truncated"):
        parse_diag_messages(RECORDED_DIAG[:100])


def test_proc_net_tcp_parses_without_times() -> None:
    listener, conn = parse_proc_net_tcp(RECORDED_TCP)
    assert listener == TcpSocket("LISTEN", ("127.0.0.1", 60003), ("0.0.0.0", 0), inode=498156)
    assert conn.state == "ESTABLISHED" and conn.remote == ("127.0.0.1", 58716)
    assert (conn.rqueue, conn.wqueue, conn.last_recv_ms, conn.data_segs_in) == (18, 0, None, None)


def test_proc_net_tcp6_addresses() -> None:
    wildcard, loopback = parse_proc_net_tcp(RECORDED_TCP6)
    assert wildcard.local == ("::", 46267)
    assert loopback.local == ("::1", 38333)


# -- the quiet rule, as a table ------------------------------------------------------------


def conn(
    recv: int | None = 5000,
    sent: int | None = 5000,
    rq: int = 0,
    wq: int = 0,
    state: str = "ESTABLISHED",
    segs: tuple[int, int] | None = (1, 1),
) -> TcpSocket:
    return TcpSocket(
        state,
        ("10.0.0.2", 8000),
        ("10.0.0.9", 40000),
        rq,
        wq,
        1,
        recv,
        sent,
        *(segs or (None, None)),
    )


@pytest.mark.parametrize(
    ("connection", "busy_because"),
    [
        (conn(), None),  # keep-alive connection, answered 5 s ago
        (conn(state="SYN_RECV", recv=None, sent=None), "connecting"),
        (conn(rq=120), "120 bytes received, not yet read"),
        (conn(wq=4096), "4096 bytes sent, not yet acknowledged"),
        (conn(recv=None, sent=None), "open connection (no activity times"),
        (conn(recv=60000, sent=60000, segs=(1, 0)), "received 60.0s ago, never answered"),
        (conn(recv=30000, sent=45000), "received 30.0s ago, not answered yet"),
        (conn(recv=5000, sent=1500), "data 1.5s ago"),  # streaming, between chunks
        (conn(recv=1999, sent=1999), "data 2.0s ago"),
        (conn(recv=2000, sent=2000), None),  # exactly the quiet period: quiet
    ],
)
def test_quiet_rule(connection: TcpSocket, busy_because: str | None) -> None:
    reasons = busy_reasons([connection], quiet=2.0)
    if busy_because is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and busy_because in reasons[0], reasons
        assert reasons[0].startswith("10.0.0.9:40000: ")


def test_quiet_rule_listener_with_unaccepted_connections_is_busy() -> None:
    listener = TcpSocket("LISTEN", ("0.0.0.0", 8000), ("0.0.0.0", 0), rqueue=2)
    assert busy_reasons([], 2.0, [listener]) == ["0.0.0.0:8000: 2 connections not accepted yet"]
    idle = TcpSocket("LISTEN", ("0.0.0.0", 8000), ("0.0.0.0", 0), rqueue=0, wqueue=128)
    assert busy_reasons([], 2.0, [idle]) == []


def test_last_data_age_is_the_newest_either_way() -> None:
    assert last_data_age([conn(recv=9000, sent=4000), conn(recv=3000, sent=7000)]) == 3.0
    assert last_data_age([conn(recv=None, sent=None)]) is None
    assert last_data_age([]) is None


def test_served_side_leaves_out_the_callers_own_connections() -> None:
    served = TcpSocket("ESTABLISHED", ("127.0.0.1", 8000), ("127.0.0.1", 50001), inode=11)
    own_client = TcpSocket("ESTABLISHED", ("127.0.0.1", 50001), ("127.0.0.1", 8000), inode=12)
    other = TcpSocket("ESTABLISHED", ("127.0.0.1", 8000), ("127.0.0.1", 50002), inode=13)
    listener = TcpSocket("LISTEN", ("0.0.0.0", 8000), ("0.0.0.0", 0), inode=14)
    elsewhere = TcpSocket("ESTABLISHED", ("127.0.0.1", 9000), ("127.0.0.1", 50003), inode=15)
    sockets = [served, own_client, other, listener, elsewhere]
    assert served_side(sockets, 8000, own={12}) == ([other], [listener])
    assert served_side(sockets, 8000) == ([served, other], [listener])


def listening(*hosts: str) -> list[TcpSocket]:
    return [TcpSocket("LISTEN", (h, 8000), ("0.0.0.0", 0)) for h in hosts]


@pytest.mark.parametrize(
    ("hosts", "level", "says"),
    [
        (("0.0.0.0",), None, ""),
        (("::",), None, ""),
        (("0.0.0.0", "::1"), None, ""),
        (("10.1.2.3",), "error", "listens on 10.1.2.3:8000 only"),
        (("127.0.0.5",), "error", "checks it on 127.0.0.1:8000"),
        (("::1",), "error", "[::1]:8000"),
        (("127.0.0.1", "10.1.2.3"), "warning", "10.1.2.3 will not be reachable"),
        (("127.0.0.1",), "warning", "from inside the pod alone"),
        ((), None, ""),
    ],
)
def test_bind_problem(hosts: tuple[str, ...], level: str | None, says: str) -> None:
    problem = bind_problem(listening(*hosts), 8000)
    if level is None:
        assert problem is None
    else:
        assert problem is not None and problem[0] == level and says in problem[1], problem
        assert "0.0.0.0" in problem[1]  # says what to do


# -- real sockets ----------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """A listening socket on loopback, a client connected to it, and the accepted side."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            server, _ = listener.accept()
            with server:
                yield client, server, port


def read(port: int, **kw: object) -> list[TcpSocket]:
    return list(port_activity(port, own_pid=0, **kw).connections)  # type: ignore[arg-type]


def settle(seconds: float = 0.05) -> None:
    time.sleep(seconds)  # let loopback deliver; the kernel's clocks tick in jiffies


def test_real_request_unread_then_unanswered_then_answered_then_idle(
    pair: tuple[socket.socket, socket.socket, int],
) -> None:
    client, server, port = pair
    assert "data 0." in busy_reasons(read(port), 30)[0]  # just connected
    settle(0.4)
    assert busy_reasons(read(port), 0.3) == []  # connected and silent for longer than quiet
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    settle()
    (c,) = read(port)
    assert c.rqueue > 0 and "not yet read" in busy_reasons([c], 0.3)[0]
    server.recv(1024)  # the server read the request and works on it
    settle(0.5)
    (c,) = read(port)
    assert c.last_recv_ms is not None and c.last_recv_ms >= 400
    assert "never answered" in busy_reasons([c], 0.3)[0]  # however long it takes
    server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    client.recv(1024)
    settle()
    (c,) = read(port)
    assert "s ago (quiet period 30s)" in busy_reasons([c], 30)[0]  # within the quiet period
    settle(0.4)
    assert busy_reasons(read(port), 0.3) == []  # an idle keep-alive connection
    # a second request on the same connection, read and not answered: rule 5
    client.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    settle()
    server.recv(1024)
    settle(0.5)
    assert "not answered yet" in busy_reasons(read(port), 0.3)[0]


def test_real_unacknowledged_answer_is_busy(pair: tuple[socket.socket, socket.socket, int]) -> None:
    client, server, port = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setblocking(False)
    sent = 0
    try:
        while sent < 64 << 20:
            sent += server.send(b"x" * 65536)
    except BlockingIOError:
        pass  # the client does not read: the answer backs up
    settle()
    (c,) = read(port)
    assert c.wqueue > 0
    assert "not yet acknowledged" in busy_reasons([c], 0.0)[0]


def test_the_callers_own_connections_are_left_out_by_default(
    pair: tuple[socket.socket, socket.socket, int],
) -> None:
    _client, _server, port = pair
    assert port_activity(port).connections == ()  # the client side is this process's socket
    assert len(port_activity(port, own_pid=0).connections) == 1
    assert port_activity(port).listeners[0].local == ("127.0.0.1", port)


def test_proc_fallback_sees_the_same_connection_without_times(
    pair: tuple[socket.socket, socket.socket, int],
) -> None:
    client, _server, port = pair
    client.sendall(b"hello")
    settle()
    activity = port_activity(port, own_pid=0, use_diag=False)
    assert activity.source == "proc" and not activity.has_times
    (c,) = activity.connections
    assert c.rqueue == 5 and c.last_recv_ms is None
    assert port_activity(port, own_pid=0).source == "sock_diag"
