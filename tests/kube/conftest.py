"""Fixtures for the `kube` tests: a real control plane per session, a fake node per test, and
a real node (containerd + kubelet, tests/kube/realnode.py) per session where one can start.

`make test` sets DORMANT_REQUIRE_KUBE=1 when setup built the control plane: then a missing or
broken one fails the run instead of silently skipping every `kube` test. It sets
DORMANT_REQUIRE_NODE=1 when setup built the node and the image: then a real node that cannot
start fails the tests that need it instead of skipping them. The terminal summary says which
node ran.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

try:
    from .cluster import Cluster, find_binaries, start_cluster, wait_until
    from .kubelet import FakeKubelet
    from .network import NetworkUnavailable, PodNetwork
    from .podhost import PodHost
    from .realnode import NodeUnavailable, RealNode, find_node, image_problem
    from .rest import ApiException, Rest
    from .workloads import service_account_ready
except ImportError as exc:  # the `kube` extra is not installed
    _MISSING: str | None = f"{exc}; install the `kube` extra (`make setup` does)"
else:
    _MISSING = None

if TYPE_CHECKING:
    from .fleet import Fleet


def _unavailable(why: str) -> None:
    if os.environ.get("DORMANT_REQUIRE_KUBE") == "1":
        pytest.fail(
            f"Kubernetes control plane required (DORMANT_REQUIRE_KUBE=1) but unavailable: {why}"
        )
    pytest.skip(f"no Kubernetes control plane here: {why}")


#: What this session's `real_node` fixture found: "real ..." or "fake only: why" (the summary).
_NODE_CHOICE: list[str] = []


def _no_real_node(why: str) -> None:
    _NODE_CHOICE.append(f"fake node only (the real node could not start: {why.splitlines()[0]})")
    if os.environ.get("DORMANT_REQUIRE_NODE") == "1":
        pytest.fail(f"a real node required (DORMANT_REQUIRE_NODE=1) but unavailable: {why}")
    pytest.skip(f"no real Kubernetes node here (the fake node's tests still run): {why}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line saying which node the `kube` tests ran on."""
    if _NODE_CHOICE:
        terminalreporter.write_line(f"kube node: {_NODE_CHOICE[0]}")


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    """A real node with its own control plane, shared by the session, Dormant's image imported;
    where it cannot start, the test skips saying why (fails under DORMANT_REQUIRE_NODE=1)."""
    if _MISSING is not None:
        _unavailable(_MISSING)
    found = find_node()
    if isinstance(found, str):
        _no_real_node(found)
        raise AssertionError("unreachable")
    problem = image_problem()
    if problem is not None:
        _no_real_node(problem)
    with contextlib.ExitStack() as stack:
        try:
            node = stack.enter_context(RealNode.running(found, tmp_path_factory.mktemp("node")))
        except NodeUnavailable as exc:
            _no_real_node(str(exc))
            raise AssertionError("unreachable") from exc
        _NODE_CHOICE.append(
            f"real ({node.name}: kubelet + containerd + runc, images {', '.join(node.images)})"
        )
        yield node


@pytest.fixture
def node_namespace(real_node: RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real node's control plane, deleted afterwards."""
    kube = real_node.kube
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    kube.post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    # Pods are admitted once the namespace's `default` ServiceAccount has its token (the
    # ServiceAccount admission plugin mounts it), as in any cluster of this release.
    wait_until(
        f"a token for {name}'s default ServiceAccount",
        lambda: service_account_ready(kube, name, "default"),
        timeout=60,
    )
    yield name
    with contextlib.suppress(ApiException):
        kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="session")
def pod_network() -> Iterator[PodNetwork]:
    """The session's pod network (tests/kube/network.py): a bridge, a namespace per pod."""
    if _MISSING is not None:
        _unavailable(_MISSING)
    try:
        network = PodNetwork.create()
    except NetworkUnavailable as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="session")
def kube_cluster(
    tmp_path_factory: pytest.TempPathFactory, pod_network: PodNetwork
) -> Iterator[Cluster]:
    """etcd + kube-apiserver + kube-controller-manager, shared by the session. The API server
    listens on the pod network's gateway address: the host and the pods both reach it."""
    found = find_binaries()
    if isinstance(found, str):
        _unavailable(found)
        raise AssertionError("unreachable")
    workdir = tmp_path_factory.mktemp("kube")
    with start_cluster(found, workdir, address=pod_network.gateway) as cluster:
        yield cluster


@pytest.fixture
def kube(kube_cluster: Cluster) -> Rest:
    """Plain-JSON admin access to the test cluster."""
    return Rest(kube_cluster.api)


@pytest.fixture
def namespace(kube_cluster: Cluster, kube: Rest, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    kube.post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    try:
        kube.delete(f"/api/v1/namespaces/{name}")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def kubelet(
    kube_cluster: Cluster, pod_network: PodNetwork, namespace: str, tmp_path: Path
) -> Iterator[FakeKubelet]:
    """A fake node (see tests/kube/kubelet.py) serving this test's namespace."""
    node = FakeKubelet(
        kube_cluster.client(),
        tmp_path / "node",
        network=pod_network,
        node=f"node-{namespace}",
        namespaces=[namespace],
    ).start()
    try:
        yield node
    finally:
        node.stop()
    assert not node.errors, f"the fake kubelet hit errors: {node.errors}"


@pytest.fixture
def pod_host(request: pytest.FixtureRequest, tmp_path: Path) -> PodHost:
    """The real node where it can start, else the fake node (see tests/kube/podhost.py); under
    DORMANT_REQUIRE_NODE=1 a real node that cannot start fails the test instead."""
    try:
        node: RealNode = request.getfixturevalue("real_node")
    except pytest.skip.Exception as exc:
        kube: Rest = request.getfixturevalue("kube")
        fake: FakeKubelet = request.getfixturevalue("kubelet")
        namespace: str = request.getfixturevalue("namespace")
        kube.post(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "state"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        return PodHost(
            "fake",
            kube,
            namespace,
            fake.log,
            {"persistentVolumeClaim": {"claimName": "state"}},
            "dormant:0.1.0",
            why_fake=str(exc.msg),
        )
    namespace = request.getfixturevalue("node_namespace")
    state = tmp_path / "state"
    state.mkdir()
    return PodHost(
        "real",
        node.kube,
        namespace,
        lambda pod: node.container_log(namespace, pod, "main"),
        {"hostPath": {"path": str(state), "type": "Directory"}},
        node.images[-1],
    )


@pytest.fixture
def fleet(
    criu: object,
    kube_cluster: Cluster,
    pod_network: PodNetwork,
    kube: Rest,
    namespace: str,
    kubelet: FakeKubelet,
    tmp_path: Path,
) -> Iterator[Fleet]:
    """Activators, an operator and the model on this test's fake node (tests/kube/fleet.py),
    stopped afterwards; the tails of their logs are printed."""
    from .fleet import Fleet

    f = Fleet(kube, namespace, kubelet, kube_cluster, pod_network, tmp_path)
    try:
        yield f
    finally:
        f.stop()
        for proc in f.procs:
            print(proc.log(25))
