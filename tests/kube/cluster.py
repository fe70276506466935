"""A real Kubernetes control plane for the `kube` tests: etcd, API server, controller manager.

The binaries come from `scripts/setup-kube.sh` (Debian bookworm's `kubernetes` 1.20 source
package, built into `.deps/kube/bin`) and Debian's `etcd-server`. etcd listens on loopback,
the API server on `address` (the pod network's gateway in the suite, so that pods reach it
too; 127.0.0.1 by default), on ports chosen free at start; state lives in one private
directory; every process is ended by its PID. There is no scheduler and no kubelet:
`tests/kube/kubelet.py` plays both.

The API server serves TLS with a self-signed certificate made at start, authenticates static
tokens (`admin` is in `system:masters`), authorizes with RBAC (so the Roles in `deploy/` mean
something: `Cluster.client(as_user=...)` impersonates a service account to check them), signs
service-account tokens with a key made at start, and has the ServiceAccount admission plugin
off (no token volumes are injected into pods: the fake node could not mount them). The real
node's control plane (`in_cluster`, tests/kube/realnode.py) has it on, as clusters do: its
pods (Dormant's activator and operator among them) get their tokens and reach the API server
at the `kubernetes` Service's ClusterIP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

__all__ = [
    "CONTROLLERS",
    "Cluster",
    "ClusterError",
    "KubeBinaries",
    "find_binaries",
    "free_port",
    "start_cluster",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = ROOT / ".deps" / "kube" / "bin"
UNAVAILABLE = ROOT / ".deps" / "kube" / "unavailable"

#: What kube-controller-manager runs: enough for Deployments, StatefulSets and Jobs to get
#: Pods, for Services to get Endpoints, for owners to garbage-collect their dependents, for
#: namespaces to be deleted, for PodDisruptionBudgets to have a status (the Eviction API reads
#: it) and for every namespace to get its `default` ServiceAccount.
CONTROLLERS = (
    "deployment",
    "replicaset",
    "statefulset",
    "job",
    "endpoint",
    "garbagecollector",
    "namespace",
    "disruption",
    "serviceaccount",
)

#: A loopback range for ClusterIPs: nothing routes them here (there is no kube-proxy), and
#: a test that tries anyway reaches this machine, never a private network.
SERVICE_CIDR = "127.100.0.0/16"


class ClusterError(RuntimeError):
    """The control plane could not be started or stopped; the message carries log tails."""


@dataclass(frozen=True)
class KubeBinaries:
    apiserver: Path
    controller_manager: Path
    etcd: Path


def find_binaries() -> KubeBinaries | str:
    """The binaries, or why they are missing (what setup printed, or what to run)."""
    bin_dir = Path(os.environ.get("DORMANT_KUBE_BIN", DEFAULT_BIN))
    apiserver = bin_dir / "kube-apiserver"
    manager = bin_dir / "kube-controller-manager"
    etcd = shutil.which("etcd")
    if not (apiserver.is_file() and manager.is_file()):
        why = UNAVAILABLE.read_text().strip() if UNAVAILABLE.is_file() else ""
        return f"no kube-apiserver/kube-controller-manager in {bin_dir}" + (
            f": {why}" if why else "; run `make setup` (scripts/setup-kube.sh builds them)"
        )
    if etcd is None:
        return "no etcd on PATH; run `make setup` (it installs Debian's etcd-server)"
    return KubeBinaries(apiserver, manager, Path(etcd))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path.name}: no log)"
    return "\n".join(text[-lines:])


@dataclass
class ManagedProc:
    """A process a test harness started (the control plane's, the real node's), with its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    """A running control plane. `api` is an admin client; `kubeconfig` works for kubectl/kopf."""

    dir: Path
    server: str
    kubeconfig: Path
    ca_file: Path
    admin_token: str
    sa_key: Path
    api: k8s.ApiClient = field(repr=False)
    _procs: list[ManagedProc] = field(default_factory=list, repr=False)

    # -- clients ---------------------------------------------------------------------------
    def client(self, as_user: str | None = None, groups: tuple[str, ...] = ()) -> k8s.ApiClient:
        """A new API client: the admin, or impersonating `as_user` (e.g.
        `system:serviceaccount:NS:NAME`) with `groups`, to check what RBAC lets that user do."""
        api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        if as_user is not None:
            api.set_default_header("Impersonate-User", as_user)
            for group in groups:
                # The client sends one value per header name; RBAC tests need at most one group.
                api.set_default_header("Impersonate-Group", group)
        return api

    def service_account_client(self, namespace: str, name: str) -> k8s.ApiClient:
        """A client acting as the service account NAMESPACE/NAME (and nothing more)."""
        return self.client(f"system:serviceaccount:{namespace}:{name}")

    # -- diagnostics -----------------------------------------------------------------------
    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {p.name} (pid {p.popen.pid}, exit {p.popen.poll()}) {p.log}\n"
            + _tail(p.log, lines)
            for p in self._procs
        )

    def check_alive(self) -> None:
        """Raise ClusterError if a component died (with the log tails)."""
        dead = [p.name for p in self._procs if p.popen.poll() is not None]
        if dead:
            raise ClusterError(f"control plane component(s) exited: {dead}\n{self.log_tails()}")

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each component (newest first) by PID; SIGKILL what is left after `timeout`."""
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        with contextlib.suppress(Exception):
            self.api.close()


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _make_credentials(pki: Path, address: str, service_ip: str = "") -> None:
    pki.mkdir(parents=True, exist_ok=True)
    # In-cluster clients reach the API server at the `kubernetes` Service's ClusterIP.
    extra = f",IP:{service_ip}" if service_ip else ""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kube-apiserver",
        "-addext",
        f"subjectAltName=IP:127.0.0.1,IP:{address}{extra},DNS:localhost,DNS:kubernetes.default.svc",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for name in ("apiserver.key", "sa.key"):
        (pki / name).chmod(0o600)


def _wait(
    what: str,
    deadline: float,
    check: Callable[[], bool],
    cluster_tails: Callable[[], str],
    alive: Callable[[], None],
) -> None:
    last: Exception | None = None
    while time.monotonic() < deadline:
        alive()
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.25)
    raise ClusterError(f"timed out waiting for {what} (last error: {last!r})\n{cluster_tails()}")


def _get(url: str, token: str, ca: Path) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@contextlib.contextmanager
def start_cluster(
    binaries: KubeBinaries,
    workdir: Path,
    timeout: float = 180.0,
    address: str = "127.0.0.1",
    controllers: tuple[str, ...] = CONTROLLERS,
    service_cidr: str = SERVICE_CIDR,
    in_cluster: bool = False,
) -> Iterator[Cluster]:
    """Start etcd, the API server (on `address`, ClusterIPs from `service_cidr`) and the
    controller manager (running `controllers`) under `workdir`; stop them after.

    `in_cluster` (the real node, whose pods run Dormant's own components): pods get their
    service account's token mounted (the ServiceAccount admission plugin, the token
    controller), the `kubernetes` Service's Endpoints name the API server, and its
    certificate is valid for that Service's ClusterIP, as in any cluster.

    Waits (at most `timeout` seconds in all) for /readyz, the `default` namespace and the
    controller manager's first ReplicaSet-visible sign of life; raises ClusterError with the
    components' log tails otherwise.
    """
    deadline = time.monotonic() + timeout
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    service_ip = str(next(ipaddress.ip_network(service_cidr).hosts())) if in_cluster else ""
    _make_credentials(pki, address, service_ip)
    token = secrets.token_hex(16)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    tokens.chmod(0o600)

    etcd_port, peer_port, api_port = free_port(), free_port(), free_port(address)
    server = f"https://{address}:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{server}", certificate-authority: "{pki / "apiserver.crt"}"}}
users:
- name: admin
  user: {{token: "{token}"}}
contexts:
- name: test
  context: {{cluster: test, user: admin, namespace: default}}
current-context: test
"""
    )
    kubeconfig.chmod(0o600)

    procs: list[ManagedProc] = []

    def spawn(name: str, argv: list[str]) -> None:
        log = workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,
            )
        procs.append(ManagedProc(name, popen, log))

    def tails() -> str:
        return "\n".join(
            f"--- {p.name} (pid {p.popen.pid}, exit {p.popen.poll()})\n{_tail(p.log)}"
            for p in procs
        )

    def alive() -> None:
        dead = [p.name for p in procs if p.popen.poll() is not None]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited during start\n{tails()}")

    def stop_all() -> None:
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(15)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait(5)

    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name",
                "test",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"test=http://127.0.0.1:{peer_port}",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
        )
        _wait(
            "etcd /health",
            deadline,
            lambda: (
                b'"health":"true"' in urllib.request.urlopen(f"{etcd_url}/health", timeout=2).read()
            ),
            tails,
            alive,
        )
        spawn(
            "kube-apiserver",
            [
                str(binaries.apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={service_cidr}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                *(
                    ()
                    if in_cluster
                    else (
                        "--disable-admission-plugins=ServiceAccount",
                        "--endpoint-reconciler-type=none",
                    )
                ),
                "--allow-privileged=true",
                "--v=1",
            ],
        )
        ca = pki / "apiserver.crt"
        _wait(
            "kube-apiserver /readyz",
            deadline,
            lambda: _get(f"{server}/readyz", token, ca)[0] == 200,
            tails,
            alive,
        )
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        core = k8s.CoreV1Api(api)
        _wait(
            "the default namespace",
            deadline,
            lambda: core.read_namespace("default") is not None,
            tails,
            alive,
        )
        spawn(
            "kube-controller-manager",
            [
                str(binaries.controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--controllers={','.join(controllers)}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                "--concurrent-deployment-syncs=2",
                "--concurrent-replicaset-syncs=2",
                "--v=1",
            ],
        )
        # The serviceaccount controller writes `default` into every namespace once it runs:
        # the first sign that the controller manager is connected and reconciling.
        _wait(
            "kube-controller-manager (the default ServiceAccount)",
            deadline,
            lambda: core.read_namespaced_service_account("default", "default") is not None,
            tails,
            alive,
        )
        cluster = Cluster(
            dir=workdir,
            server=server,
            kubeconfig=kubeconfig,
            ca_file=ca,
            admin_token=token,
            sa_key=pki / "sa.key",
            api=api,
            _procs=procs,
        )
    except BaseException:
        stop_all()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_until(
    what: str,
    check: Callable[[], object],
    timeout: float = 60.0,
    interval: float = 0.2,
    diagnose: Callable[[], str] | None = None,
) -> object:
    """Poll `check` until it returns something truthy (which is returned); raise AssertionError
    naming `what`, the last exception and `diagnose()` (e.g. log tails) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r}){extra}"
            )
        time.sleep(interval)
