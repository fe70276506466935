"""Pod networking for the fake kubelet: one network namespace per pod, on a bridge of the host's.

As in a real cluster, every pod has its own network namespace with its own IP, loopback and
ports, so servers bind 0.0.0.0 inside their pod (what a restored server needs: it keeps the
listening address it was dumped with, and the pod that restores it has another IP), and the
API server accepts the pod IPs in core/v1 Endpoints (1.20 refuses loopback addresses there).

Layout, per test session (`PodNetwork.create()`):

* a private /24 out of 10.244.0.0/16 (checked unused here: no route of the host's overlaps it),
  index N chosen free, so several test sessions on one machine never share one;
* a bridge `dkbN` on the host holding the gateway address 10.244.N.1/24: host processes (the
  test, the activator, the API server) reach pods through it, and pods reach the host at it;
* per pod (`take()`): a network namespace `dkN-I`, a veth pair whose host end `dkNhI` is a
  port of the bridge and whose other end is `eth0` in the namespace with 10.244.N.I/24,
  loopback up. The gateway is on-link; there is no default route, because nothing forwards
  beyond the host: a packet to anywhere else (the machine's DNS resolver, when a server
  resolves its own name at bind) fails at once instead of timing out. The container's
  process runs in the namespace through `nsenter --net` (`PodAddress.wrap`), which changes
  nothing else (no mount namespace).

Everything is removed by name: a pod's namespace by `give()` (its veth goes with it), the
bridge and what is left by `close()`. `create()` first removes what earlier sessions left
whose owner process is gone (an owner file per index under /run/dormant-kube-net, written
under a lock), never a live session's. Needs root (CAP_NET_ADMIN) and iproute2's `ip`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NetworkUnavailable", "PodAddress", "PodNetwork", "process_exists"]

SUPERNET = ipaddress.ip_network("10.244.0.0/16")
STATE = Path("/run/dormant-kube-net")
_BRIDGE = re.compile(r"^dkb(\d{1,3})$")


class NetworkUnavailable(RuntimeError):
    """Pod networking cannot be set up here (not root, no `ip`, the range is in use...)."""


def _ip(*args: str, check: bool = True) -> str:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkUnavailable(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetworkUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def process_exists(pid: int) -> bool:
    """Whether a process with this PID exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class PodAddress:
    """A pod's place on the network: its IP and its network namespace."""

    ip: str
    netns: str

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the pod's network namespace (nsenter execs it: same pid)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]


class PodNetwork:
    """The session's bridge and its pods' namespaces (see the module docstring)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.subnet = ipaddress.ip_network(f"10.244.{index}.0/24")
        self.gateway = f"10.244.{index}.1"
        self.bridge = f"dkb{index}"
        self._lock = threading.Lock()
        self._free = list(range(2, 255))
        self._used: dict[str, int] = {}  # netns -> host number
        self._closed = False

    # -- session ---------------------------------------------------------------------------
    @classmethod
    def create(cls) -> PodNetwork:
        """Clean what dead sessions left, choose a free /24, make the bridge; or raise
        NetworkUnavailable saying why."""
        if os.geteuid() != 0:
            raise NetworkUnavailable("pod networking needs root (network namespaces, a bridge)")
        for tool in ("ip", "nsenter"):
            if shutil.which(tool) is None:
                raise NetworkUnavailable(f"no `{tool}` on PATH (iproute2 / util-linux)")
        STATE.mkdir(mode=0o700, exist_ok=True)
        with _locked():
            for index in _stale_indexes():
                _remove_index(index)
            taken = {int(m.group(1)) for m in map(_BRIDGE.match, _links()) if m}
            _check_range_unused()
            free = [i for i in range(1, 255) if i not in taken]
            if not free:
                raise NetworkUnavailable("all 254 pod subnets of 10.244.0.0/16 are in use")
            index = free[0]
            net = cls(index)
            (STATE / str(index)).write_text(f"{os.getpid()}\n")
            try:
                _ip("link", "add", net.bridge, "type", "bridge")
                _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
                _ip("link", "set", net.bridge, "up")
            except NetworkUnavailable:
                _remove_index(index)
                raise
        return net

    def close(self) -> None:
        """Remove every namespace this network made, then the bridge and the owner file."""
        with self._lock:
            self._closed = True
            names = list(self._used)
            self._used.clear()
        for name in names:
            _ip("netns", "del", name, check=False)
        with _locked():
            _remove_index(self.index)

    # -- pods ------------------------------------------------------------------------------
    def take(self) -> PodAddress:
        """A new pod namespace with its address (addresses freed last are reused last)."""
        with self._lock:
            if self._closed:
                raise NetworkUnavailable("the pod network is closed")
            if not self._free:
                raise NetworkUnavailable(f"no free pod IP left in {self.subnet} (253 pods)")
            host = self._free.pop(0)
            name = f"dk{self.index}-{host}"
            self._used[name] = host
        address = PodAddress(f"10.244.{self.index}.{host}", name)
        outer, inner = f"dk{self.index}h{host}", f"dk{self.index}c{host}"
        try:
            _ip("netns", "del", name, check=False)  # a leftover of ours (e.g. a failed give)
            _ip("netns", "add", name)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", name)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", name, "link", "set", inner, "name", "eth0")
            _ip("-n", name, "addr", "add", f"{address.ip}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            # No default route: the host (the gateway, on-link) is all a pod can reach here
            # (nothing forwards further), and without one a packet elsewhere, e.g. to the
            # machine's DNS resolver (a server's getfqdn at bind), fails at once instead of
            # timing out silently.
        except NetworkUnavailable:
            self.give(address)
            _ip("link", "del", outer, check=False)
            raise
        return address

    def give(self, address: PodAddress) -> None:
        """Remove the pod's namespace (and with it its veth pair); the IP is free again."""
        _ip("netns", "del", address.netns, check=False)
        with self._lock:
            host = self._used.pop(address.netns, None)
            if host is not None and not self._closed:
                self._free.append(host)

    def pods(self) -> list[str]:
        with self._lock:
            return list(self._used)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with (STATE / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _links() -> list[str]:
    return [link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")]


def _stale_indexes() -> set[int]:
    """Indexes whose bridge or owner file exists but whose owner process is gone."""
    found = {int(m.group(1)) for m in map(_BRIDGE.match, _links()) if m}
    found |= {int(p.name) for p in STATE.iterdir() if p.name.isdigit()}
    stale = set()
    for index in found:
        try:
            pid = int((STATE / str(index)).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid <= 0 or not process_exists(pid):
            stale.add(index)
    return stale


def _remove_index(index: int) -> None:
    names = [line.split()[0] for line in _ip("netns", "list", check=False).splitlines() if line]
    for name in names:
        if name.startswith(f"dk{index}-"):
            _ip("netns", "del", name, check=False)
    for link in _links():
        if re.fullmatch(rf"dk{index}[hc]\d+|dkb{index}", link):
            _ip("link", "del", link, check=False)
    with contextlib.suppress(FileNotFoundError):
        (STATE / str(index)).unlink()


def _check_range_unused() -> None:
    """No route of the host's (but our bridges') overlaps 10.244.0.0/16."""
    for route in json.loads(_ip("-j", "route", "show") or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or _BRIDGE.match(route.get("dev", "")):
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(SUPERNET):
                raise NetworkUnavailable(
                    f"{SUPERNET} is in use on this machine (route {dst} dev {route.get('dev')}); "
                    "the fake kubelet's pod network needs it"
                )
