"""A REAL Kubernetes node for the `kube` tests: containerd, runc, a CNI bridge, kubelet,
kube-scheduler and kube-proxy 1.20, with a control plane of its own (tests/kube/cluster.py).

Where it can start (root, `scripts/setup-node.sh` built .deps/node/bin, Debian's containerd,
runc and CNI plugins installed), pods run in real containers from real images: the image
`scripts/build-image.sh` builds (.deps/image/dormant.tar, `imagePullPolicy: Never`) and a
pause image made here from the static pause binary. Elsewhere the suite keeps the fake node
(tests/kube/kubelet.py); conftest.py says which ran.

Layout, per test session (`RealNode.start()`), index N chosen free (1-254):

* a network namespace `dknodeN` holds the whole node: containerd (so the CNI bridge and every
  pod's veth are made there), kubelet (its ports 10250/10248 are private to it), the
  scheduler, and kube-proxy, whose iptables rules are the namespace's own: ClusterIPs
  (10.248.N.0/24, routed from the host to the node too) work without touching the host's.
  It is joined to the host by a veth pair: `dknNh` 10.246.N.1/24 on the host,
  `eth0` 10.246.N.2/24 (the node IP) in the namespace, whose default route points back at
  the host. The host routes the pod subnet 10.247.N.0/24 to the node, which forwards
  (net.ipv4.ip_forward is per namespace: the host's is untouched), so the test reaches pod
  IPs directly. Nothing is in 10.244.0.0/16 (the fake node's pod networks).
* the node's control plane (etcd, API server on 10.246.N.1, controller manager with
  `nodelifecycle`, which lifts the not-ready taint) is separate from the fake node's, so
  neither scheduler nor node lifecycle ever touches the fake nodes' pods.
* containerd's root, state, socket and CNI config live under the session's directory; its
  config carries what this machine needs: restrict_oom_score_adj (root lacks
  CAP_SYS_RESOURCE), disable_apparmor, the cgroupfs driver, the imported pause image.
* kubelet's pods live under the cgroup `/dormant-node-N` (created in every v1 hierarchy).

`stop()` deletes every pod and waits for its containers to stop, stops the processes (by
PID), removes leftover containers, unmounts what is left under the session directory, removes
the namespace, the host's veth, the cgroups and the /var/log/pods entries it made, and writes
back the sysctls kubelet changes (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops;
net.ipv4.ip_forward is saved too in case a plugin writes the host's). A session killed before
its teardown is cleaned up by the next one to start: the processes it recorded (PID and start
time, under /run/dormant-kube-node), whatever still runs in its pods' cgroups, its mounts,
its network, and the sysctls it saved are written back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import CONTROLLERS, Cluster, ManagedProc, find_binaries, start_cluster, wait_until
from .network import process_exists
from .rest import ApiException, Rest

__all__ = ["NodeBinaries", "NodeUnavailable", "RealNode", "find_node"]

ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = ROOT / ".deps" / "node" / "bin"
NODE_UNAVAILABLE = ROOT / ".deps" / "node" / "unavailable"
IMAGE = ROOT / ".deps" / "image" / "dormant.tar"
IMAGE_UNAVAILABLE = ROOT / ".deps" / "image" / "unavailable"
PAUSE_TAG = "dormant-pause:3.4"
STATE = Path("/run/dormant-kube-node")
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
)
CGROUPS = Path("/sys/fs/cgroup")
POD_LOGS = (Path("/var/log/pods"), Path("/var/log/containers"))


class NodeUnavailable(RuntimeError):
    """The real node cannot start here; the message says why (the suite prints it)."""


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    scheduler: Path
    proxy: Path
    pause: Path
    containerd: Path
    ctr: Path


def find_node() -> NodeBinaries | str:
    """The node's programs (from $DORMANT_NODE_BIN, default .deps/node/bin), or why they are
    missing (what setup wrote, or what to run)."""
    if os.geteuid() != 0:
        return "a real node needs root"
    bin_dir = Path(os.environ.get("DORMANT_NODE_BIN", NODE_BIN))
    need = {name: bin_dir / name for name in ("kubelet", "kube-scheduler", "kube-proxy", "pause")}
    missing = [name for name, path in need.items() if not path.is_file()]
    if missing:
        why = NODE_UNAVAILABLE.read_text().strip() if NODE_UNAVAILABLE.is_file() else ""
        return f"no {', '.join(missing)} in {bin_dir}" + (
            f": {why}" if why else "; run `make setup` (scripts/setup-node.sh builds them)"
        )
    tools = {name: shutil.which(name) for name in ("containerd", "ctr", "runc", "nsenter")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        return f"no {', '.join(absent)} on PATH; run `make setup` (Debian's containerd, runc)"
    if not Path("/usr/lib/cni/bridge").is_file():
        return "no CNI bridge plugin in /usr/lib/cni (Debian's containernetworking-plugins)"
    return NodeBinaries(
        need["kubelet"],
        need["kube-scheduler"],
        need["kube-proxy"],
        need["pause"],
        Path(str(tools["containerd"])),
        Path(str(tools["ctr"])),
    )


def image_problem() -> str | None:
    """Why Dormant's image is not there to import, or None."""
    if IMAGE.is_file():
        return None
    why = IMAGE_UNAVAILABLE.read_text().strip() if IMAGE_UNAVAILABLE.is_file() else ""
    return f"no image at {IMAGE.relative_to(ROOT)}" + (
        f": {why}" if why else "; run `make image` (scripts/build-image.sh)"
    )


def _run(argv: list[str], timeout: float = 60, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeUnavailable(f"{' '.join(argv[:4])}: {exc}") from exc
    if check and done.returncode != 0:
        raise NodeUnavailable(f"{' '.join(argv[:5])}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE.mkdir(mode=0o700, exist_ok=True)
    with (STATE / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_network(index: int) -> None:
    _run(["ip", "netns", "del", f"dknode{index}"], check=False)
    _run(["ip", "link", "del", f"dkn{index}h"], check=False)
    with contextlib.suppress(FileNotFoundError):
        (STATE / str(index)).unlink()


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): with the PID, who it is."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _end_leftovers(index: int, workdir: str) -> None:
    """What a session that died without its teardown (SIGKILL) left running: the processes
    it recorded (PID + start time, so a reused PID is never hit), then every process still in
    its pods' cgroups; then the cgroups themselves and the mounts under its `workdir`."""
    record = STATE / f"{index}.procs"
    with contextlib.suppress(OSError):
        for line in record.read_text().splitlines():
            pid, started = line.split()
            if _start_time(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    for root in _cgroup_dirs(f"dormant-node-{index}"):
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)
    for root in _cgroup_dirs(f"dormant-node-{index}"):
        _rmdir_tree(root)
    if workdir.startswith("/") and len(workdir) > 1:
        _unmount_under(workdir)
    record.unlink(missing_ok=True)
    saved = STATE / f"{index}.sysctls"
    with contextlib.suppress(OSError, ValueError):
        _restore_sysctls(json.loads(saved.read_text()))
    saved.unlink(missing_ok=True)


def _restore_sysctls(saved: dict[str, str]) -> None:
    """Write back the values a session saved before its kubelet changed them."""
    for key, value in saved.items():
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)


def _unmount_under(directory: str) -> None:
    """Lazily unmount every mount point at or under `directory`, deepest first."""
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == directory or point.startswith(directory.rstrip("/") + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        _run(["umount", "-l", point], check=False)


def _choose_index(workdir: Path) -> int:
    """A free index (removing what dead sessions left), its owner file (our PID, `workdir`)
    written; under lock."""
    for owner in list(STATE.iterdir()):
        if owner.name.isdigit():
            try:
                pid, where = owner.read_text().split("\n")[:2]
            except (OSError, ValueError):
                pid, where = "0", ""
            if not pid.isdigit() or not process_exists(int(pid)):
                _end_leftovers(int(owner.name), where)
                _remove_network(int(owner.name))
    names = {line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line}
    links = {link["ifname"] for link in json.loads(_run(["ip", "-j", "link", "show"]) or "[]")}
    routes = _run(["ip", "route", "show"])
    for index in range(1, 255):
        if (
            f"dknode{index}" in names
            or f"dkn{index}h" in links
            or (STATE / str(index)).exists()
            or f"10.246.{index}." in routes
            or f"10.247.{index}." in routes
            or f"10.248.{index}." in routes
        ):
            continue
        (STATE / str(index)).write_text(f"{os.getpid()}\n{workdir}\n")
        return index
    raise NodeUnavailable("no free node index (10.246.1-254.0/24 all in use)")


def _cgroup_dirs(name: str) -> list[Path]:
    """`name` under every cgroup v1 hierarchy (and the unified one) mounted here."""
    out = []
    for hierarchy in sorted(CGROUPS.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            out.append(hierarchy / name)
    return out


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup directory bottom-up (cgroups are removed with rmdir, never unlink)."""
    if not path.is_dir():
        return
    for child in sorted(
        (p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _cri_lines(text: str) -> str:
    """The text of a CRI log file ("TIME STREAM TAG text" per line)."""
    return "\n".join(line.split(" ", 3)[3] for line in text.splitlines() if line.count(" ") >= 3)


@dataclass
class RealNode:
    """A running node (see the module docstring). `cluster` is its control plane."""

    index: int
    dir: Path
    bins: NodeBinaries
    name: str = ""
    images: list[str] = field(default_factory=list)
    cluster: Cluster | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _procs: list[ManagedProc] = field(default_factory=list, repr=False)
    _sysctls: dict[str, str] = field(default_factory=dict, repr=False)
    _logs_before: dict[Path, set[str] | None] = field(default_factory=dict, repr=False)
    _kubepods_before: bool = False

    # -- addresses -------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"dknode{self.index}"

    @property
    def host_ip(self) -> str:
        return f"10.246.{self.index}.1"

    @property
    def node_ip(self) -> str:
        return f"10.246.{self.index}.2"

    @property
    def pod_subnet(self) -> str:
        return f"10.247.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.248.{self.index}.0/24"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return f"dormant-node-{self.index}"

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run in the node's network namespace (nothing else changes)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def ctr(self, *args: str, timeout: float = 300) -> str:
        return _run(
            [str(self.bins.ctr), "--address", str(self.socket), "-n", "k8s.io", *args],
            timeout=timeout,
        )

    @property
    def kube(self) -> Rest:
        assert self.cluster is not None
        return Rest(self.cluster.api)

    # -- diagnostics -----------------------------------------------------------------------
    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for proc in self._procs:
            try:
                text = proc.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            parts.append(f"--- {proc.name} (exit {proc.popen.poll()})\n" + "\n".join(text))
        return "\n".join(parts)

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Everything the container printed (every restart), from kubelet's CRI log files."""
        found = sorted(POD_LOGS[0].glob(f"{namespace}_{pod}_*/{container}/*.log"))
        return "\n".join(_cri_lines(p.read_text(errors="replace")) for p in found)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def running(cls, bins: NodeBinaries, workdir: Path) -> Iterator[RealNode]:
        with _locked():
            index = _choose_index(workdir)
        node = cls(index=index, dir=workdir, bins=bins, name=f"dormant-node-{index}")
        try:
            node._start()
        except BaseException:
            tails = node.log_tails()
            node.stop()
            if isinstance(sys.exc_info()[1], NodeUnavailable | AssertionError):
                raise NodeUnavailable(f"{sys.exc_info()[1]}\n{tails}") from None
            raise
        try:
            yield node
        finally:
            node.stop()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                self.wrap(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
            )
        self._procs.append(ManagedProc(name, popen, log))
        self._record(popen.pid)

    def _record(self, pid: int) -> None:
        """Note a process this session started, for a later session to end if this one dies."""
        with (STATE / f"{self.index}.procs").open("a") as record:
            record.write(f"{pid} {_start_time(pid)}\n")

    def _alive_or_raise(self) -> None:
        dead = [p.name for p in self._procs if p.popen.poll() is not None]
        if dead:
            raise NodeUnavailable(f"{', '.join(dead)} exited")

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for key in SYSCTLS:
            self._sysctls[key] = (Path("/proc/sys") / key).read_text().strip()
        # For a later session to write back if this one dies before its teardown.
        (STATE / f"{self.index}.sysctls").write_text(json.dumps(self._sysctls))
        for logs in POD_LOGS:
            self._logs_before[logs] = set(os.listdir(logs)) if logs.is_dir() else None
        self._kubepods_before = (CGROUPS / "memory" / "kubepods").exists()
        self._network()
        found = find_binaries()
        if isinstance(found, str):
            raise NodeUnavailable(found)
        self.cluster = self._stack.enter_context(
            start_cluster(
                found,
                self.dir / "control-plane",
                address=self.host_ip,
                controllers=(
                    *CONTROLLERS,
                    "nodelifecycle",
                    "endpointslice",
                    # kube-proxy 1.20 reads EndpointSlices: a selector-less Service's Endpoints
                    # (the operator writes the policies' ones) reach it through this mirror.
                    "endpointslicemirroring",
                    "serviceaccount-token",
                    "persistentvolume-binder",
                ),
                service_cidr=self.service_cidr,
                in_cluster=True,
            )
        )
        for proc in self.cluster._procs:
            self._record(proc.popen.pid)
        self._containerd()
        self._import_images()
        self._kubelet()
        self._scheduler()
        self._proxy()
        wait_until(
            f"node {self.name} Ready without the not-ready taint",
            self._ready,
            timeout=120,
            interval=0.5,
            diagnose=self.log_tails,
        )

    def _network(self) -> None:
        i, ns = self.index, self.netns
        host, inner = f"dkn{i}h", f"dkn{i}c"
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", host, "type", "veth", "peer", "name", inner])
        _run(["ip", "link", "set", inner, "netns", ns])
        _run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", host])
        _run(["ip", "link", "set", host, "up"])
        _run(["ip", "-n", ns, "link", "set", inner, "name", "eth0"])
        _run(["ip", "-n", ns, "addr", "add", f"{self.node_ip}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", self.host_ip])
        _run(["ip", "route", "add", self.pod_subnet, "via", self.node_ip, "dev", host])
        _run(["ip", "route", "add", self.service_cidr, "via", self.node_ip, "dev", host])
        # The node forwards between the host's veth and its pods' bridge (its own sysctl).
        _run(self.wrap(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]))

    def _containerd(self) -> None:
        base = self.dir / "containerd"
        for sub in ("root", "state", "cni-conf", "cni-ipam", "opt"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        cri = '"io.containerd.grpc.v1.cri"'
        (base / "config.toml").write_text(
            f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[plugins.{cri}]
  sandbox_image = "{PAUSE_TAG}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins.{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins.{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{base / "cni-conf"}"
"""
        )
        (base / "cni-conf" / "10-dormant.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "dormant-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": self.pod_subnet}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(base / "cni-ipam"),
                            },
                        }
                    ],
                }
            )
        )
        self._spawn(
            "containerd", [str(self.bins.containerd), "--config", str(base / "config.toml")]
        )

        def up() -> bool:
            self._alive_or_raise()
            return self.socket.exists() and bool(self.ctr("version", timeout=10))

        wait_until("containerd", up, timeout=60, interval=0.3, diagnose=self.log_tails)

    def _import_images(self) -> None:
        rootfs = self.dir / "pause-rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add(self.bins.pause, arcname="pause")
        pause = self.dir / "pause.tar"
        _run(
            [
                sys.executable,
                str(ROOT / "scripts" / "docker_archive.py"),
                str(rootfs),
                PAUSE_TAG,
                str(pause),
                "--cmd",
                "/pause",
            ]
        )
        archives = [pause] + ([IMAGE] if IMAGE.is_file() else [])
        for archive in archives:
            self.ctr("images", "import", str(archive), timeout=600)
        tags = [PAUSE_TAG]
        if IMAGE.is_file():
            tag_file = IMAGE.with_name("dormant.tag")
            tags.append(tag_file.read_text().strip() if tag_file.is_file() else "dormant:0.1.0")
        self.images = tags

    def _kubelet(self) -> None:
        assert self.cluster is not None
        base = self.dir / "kubelet"
        base.mkdir(parents=True, exist_ok=True)
        for path in _cgroup_dirs(self.cgroup_root):
            path.mkdir(exist_ok=True)
            if path.parent.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "serializeImagePulls": False,
            "maxPods": 30,
        }
        (base / "config.yaml").write_text(json.dumps(config))
        self._spawn(
            "kubelet",
            [
                str(self.bins.kubelet),
                f"--config={base / 'config.yaml'}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.socket}",
                f"--image-service-endpoint=unix://{self.socket}",
                f"--root-dir={base}",
                f"--cert-dir={base / 'pki'}",
                f"--node-ip={self.node_ip}",
                f"--hostname-override={self.name}",
                "--v=1",
            ],
        )

    def _scheduler(self) -> None:
        assert self.cluster is not None
        self._spawn(
            "kube-scheduler",
            [
                str(self.bins.scheduler),
                f"--kubeconfig={self.cluster.kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                f"--cert-dir={self.dir / 'scheduler-pki'}",
                "--v=1",
            ],
        )

    def _proxy(self) -> None:
        """kube-proxy (iptables mode) in the node's namespace: its rules are the namespace's
        own. --masquerade-all: a reply from a pod on the same bridge then comes back through
        the node (no br_netfilter needed); conntrack sizes are left alone (host-wide sysctls)."""
        assert self.cluster is not None
        self._spawn(
            "kube-proxy",
            [
                str(self.bins.proxy),
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--hostname-override={self.name}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={self.pod_subnet}",
                "--masquerade-all",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
                "--v=1",
            ],
        )

    def _ready(self) -> bool:
        self._alive_or_raise()
        try:
            node = self.kube.get(f"/api/v1/nodes/{self.name}")
        except ApiException:
            return False
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        taints = [t["key"] for t in node.get("spec", {}).get("taints", []) or []]
        return ready and not any("not-ready" in t or "unreachable" in t for t in taints)

    # -- teardown --------------------------------------------------------------------------
    def _tasks(self) -> list[tuple[str, int, str]]:
        try:
            out = self.ctr("tasks", "ls", timeout=20)
        except NodeUnavailable:
            return []
        rows = []
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                rows.append((parts[0], int(parts[1]), parts[2]))
        return rows

    def _delete_pods(self) -> None:
        if self.cluster is None or all(p.name != "kubelet" for p in self._procs):
            return
        kube = self.kube
        with contextlib.suppress(Exception):
            for pod in kube.get("/api/v1/pods").get("items", []):
                meta = pod["metadata"]
                with contextlib.suppress(ApiException):
                    kube.delete(
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                    )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not any(status == "RUNNING" for _, _, status in self._tasks()):
                break
            time.sleep(1)

    def stop(self) -> None:
        """Tear everything down (see the module docstring); safe after a failed start."""
        with contextlib.suppress(Exception):
            self._delete_pods()
        for proc in reversed(self._procs):
            if proc.name == "containerd":
                continue
            self._end(proc)
        # Whatever kubelet did not stop: kill its tasks, remove the containers.
        netns: set[str] = set()
        if self.socket.exists():
            for task, _pid, _status in self._tasks():
                with contextlib.suppress(NodeUnavailable):
                    self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, timeout=20)
            time.sleep(0.5)
            for task, _pid, _status in self._tasks():
                with contextlib.suppress(NodeUnavailable):
                    self.ctr("tasks", "delete", "--force", task, timeout=20)
            with contextlib.suppress(NodeUnavailable):
                for line in self.ctr("containers", "ls", "-q", timeout=20).split():
                    netns.update(self._netns_of(line))
                    with contextlib.suppress(NodeUnavailable):
                        self.ctr("containers", "delete", line, timeout=20)
        # The pods' network namespaces (cni-...) that no StopPodSandbox removed: the sandboxes'
        # own specs name them, so only ours are removed.
        for name in sorted(netns):
            _run(["ip", "netns", "del", name], check=False)
        for proc in self._procs:
            if proc.name == "containerd":
                self._end(proc)
        self._end_shims()
        self._unmount_all()
        self._stack.close()  # the control plane
        _remove_network(self.index)
        (STATE / f"{self.index}.procs").unlink(missing_ok=True)
        for path in _cgroup_dirs(self.cgroup_root):
            _rmdir_tree(path)
        if not self._kubepods_before:
            for path in _cgroup_dirs("kubepods"):
                _rmdir_tree(path)
        for logs, before in self._logs_before.items():
            if before is None:
                shutil.rmtree(logs, ignore_errors=True)
            elif logs.is_dir():
                for entry in set(os.listdir(logs)) - before:
                    target = logs / entry
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target, ignore_errors=True)
                    else:
                        target.unlink(missing_ok=True)
        _restore_sysctls(self._sysctls)
        (STATE / f"{self.index}.sysctls").unlink(missing_ok=True)

    def _netns_of(self, container: str) -> set[str]:
        """The named network namespace (under /run/netns) a container's spec joins, if any."""
        try:
            info = json.loads(self.ctr("containers", "info", container, timeout=20))
        except (NodeUnavailable, ValueError):
            return set()
        found = set()
        for ns in ((info.get("Spec") or {}).get("linux") or {}).get("namespaces") or []:
            path = ns.get("path") or ""
            if ns.get("type") == "network" and re.fullmatch(r"/(var/)?run/netns/cni-[\w-]+", path):
                found.add(Path(path).name)
        return found

    def _end(self, proc: ManagedProc, timeout: float = 20) -> None:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)

    def _end_shims(self) -> None:
        """containerd's shims outlive it (they are reparented); ours name our socket."""
        needle = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        _unmount_under(str(self.dir))


def served_pids(marker: str) -> list[int]:
    """PIDs (as the host sees them) of processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def capabilities(pid: int) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, as integers."""
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        match = re.match(r"^(Cap\w+):\s+([0-9a-f]+)$", line)
        if match:
            caps[match.group(1)] = int(match.group(2), 16)
    return caps


def pod_json(kube: Rest, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))
