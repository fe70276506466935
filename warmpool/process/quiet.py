"""Is a request in flight on the served port? Pure rules over ``warmpool.process.sockets``' figures.

**The quiet rule** (``busy_reasons``). A listening socket with connections the server has not
accepted yet (its ``idiag_rqueue``) is busy: CRIU refuses to dump those ("In-flight
connection"). Then, for each connection on the served port:

1. a connection still in the handshake (SYN_RECV) is busy: a request is arriving;
2. unread received bytes (rqueue > 0) or unacknowledged sent bytes (wqueue > 0): busy;
3. without times (/proc fallback): every open connection is busy, idle keep-alive ones too
   (nothing tells them apart, so the rule errs on the side of never cutting a request);
4. data received but never any sent (``tcpi_data_segs_in`` > 0, ``tcpi_data_segs_out`` 0):
   a first request not answered yet: busy, however long ago it came;
5. data received more recently than data sent (``tcpi_last_data_recv`` <
   ``tcpi_last_data_sent``): a later request not answered yet (a slow prefill, a long
   computation): busy, however long ago;
6. any data either way within the last ``quiet`` seconds (a streamed answer between two
   chunks): busy.

A connection that passes all of these is idle (an HTTP keep-alive connection after its
answer). Times have the kernel's resolution (a jiffy: 1-10 ms), so a request that arrives
within the same jiffy as the previous answer's last byte looks answered once ``quiet`` has
passed (rule 5 cannot order them; rule 6 still holds it for ``quiet``). Protocols where the
client speaks last with nothing to answer (a WebSocket pong to the server's ping) look busy
until the server sends again; pings also count as data, so a server that pings its clients
never looks idle for longer than its ping interval.

``bind_problem`` says whether the server's listening addresses survive a restore on another
pod IP; ``listen_problem`` whether a booting tree listens where it can be reached at all
(both owners share it: the local runtime's boot fails fast with its line); ``port_taken``
whether another process holds the port a snapshot's server will take back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from warmpool.process.sockets import TcpSocket

__all__ = ["bind_problem", "busy_reasons", "last_data_age", "listen_problem", "port_taken"]


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def busy_reasons(
    connections: Iterable[TcpSocket], quiet: float, listeners: Iterable[TcpSocket] = ()
) -> list[str]:
    """Why the server may have a request in flight (empty: it has none), by the quiet rule
    of the module docstring; ``quiet`` in seconds."""
    quiet_ms = quiet * 1000
    reasons = [
        f"{_where(s.local)}: {s.rqueue} connections not accepted yet"
        for s in listeners
        if s.rqueue > 0
    ]
    for c in connections:
        who = _where(c.remote)
        if c.state == "SYN_RECV":
            reasons.append(f"{who}: connecting")
        elif c.rqueue > 0:
            reasons.append(f"{who}: {c.rqueue} bytes received, not yet read by the server")
        elif c.wqueue > 0:
            reasons.append(f"{who}: {c.wqueue} bytes sent, not yet acknowledged by the client")
        elif c.last_recv_ms is None or c.last_sent_ms is None:
            reasons.append(f"{who}: open connection (no activity times without sock_diag)")
        elif c.data_segs_in and c.data_segs_out == 0:
            reasons.append(
                f"{who}: request received {c.last_recv_ms / 1000:.1f}s ago, never answered"
            )
        elif c.last_recv_ms < c.last_sent_ms:
            reasons.append(
                f"{who}: request received {c.last_recv_ms / 1000:.1f}s ago, not answered yet"
            )
        elif min(c.last_recv_ms, c.last_sent_ms) < quiet_ms:
            age = min(c.last_recv_ms, c.last_sent_ms) / 1000
            reasons.append(f"{who}: data {age:.1f}s ago (quiet period {quiet:g}s)")
    return reasons


def last_data_age(connections: Iterable[TcpSocket]) -> float | None:
    """Seconds since the last data either way on any connection; None when there is no
    connection or no times (the /proc source)."""
    ages = [
        min(c.last_recv_ms, c.last_sent_ms) / 1000
        for c in connections
        if c.last_recv_ms is not None and c.last_sent_ms is not None
    ]
    return min(ages) if ages else None


def _is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def bind_problem(listeners: Sequence[TcpSocket], port: int) -> tuple[str, str] | None:
    """Whether the served command's listening addresses suit a pod whose snapshot may be
    restored on another pod IP: None (it listens on 0.0.0.0 or ::), ('error', why) when the
    supervisor cannot reach it on 127.0.0.1, ('warning', why) otherwise."""
    if not listeners:
        return None
    hosts = sorted({s.local[0] for s in listeners})
    if any(_is_wildcard(h) for h in hosts):
        return None
    shown = ", ".join(_where((h, port)) for h in hosts)
    fix = f"start it on 0.0.0.0 (or ::), e.g. --host 0.0.0.0 --port {port}"
    if "127.0.0.1" not in hosts:
        return (
            "error",
            f"the served command listens on {shown} only: the supervisor checks it on "
            f"127.0.0.1:{port}, and a restored server keeps the address it was dumped with, "
            f"which a replacement pod does not have; {fix}",
        )
    other = [h for h in hosts if not ipaddress.ip_address(h).is_loopback]
    if other:
        return (
            "warning",
            f"the served command listens on {shown}: after a restore on another pod IP, "
            f"{', '.join(other)} will not be reachable; {fix}",
        )
    return (
        "warning",
        f"the served command listens on {shown} only: it is reachable from inside the pod "
        f"alone, not through a Service; {fix}",
    )


def listen_problem(listeners: Sequence[TcpSocket], port: int, *, told: bool) -> str | None:
    """Why a booting process tree that listens on ``listeners`` (its own LISTEN sockets) will
    never answer on 127.0.0.1:``port``, in one line; None while it may still. ``told``: its
    command was given the port (``{port}`` in it, or a fixed port).

    1. Not told, and listening elsewhere: it chose its own port, which Dormant cannot guess.
    2. Listening on ``port``, but not where 127.0.0.1 reaches it: ``bind_problem``'s error.
    A tree that was told and listens only on other ports may still open ``port`` (a metrics
    port first, the API after the model loaded): not a problem yet.
    """
    ours = [s for s in listeners if s.local[1] == port]
    others = sorted({_where(s.local) for s in listeners if s.local[1] != port})
    if not told and not ours and others:
        theirs = sorted({s.local[1] for s in listeners})
        return (
            f"the command listens on {', '.join(others)}, not on the port Dormant chose "
            f"({port}): its command has no {{port}}; put {{port}} where the port goes "
            f"(e.g. --port {{port}}), or set `port: {theirs[0]}` if it always listens there"
        )
    problem = bind_problem(ours, port)
    if problem is not None and problem[0] == "error":
        return problem[1]
    return None


def port_taken(listeners: Sequence[TcpSocket], port: int) -> str | None:
    """Whether ``listeners`` (everything listening on ``port`` now) keep a restored server
    from binding it again: the line that says so, or None."""
    if not listeners:
        return None
    where = ", ".join(sorted({_where(s.local) for s in listeners}))
    return (
        f"port {port} is taken by another process (listening on {where}); stop it, or delete "
        "the snapshot to cold boot on another port"
    )
