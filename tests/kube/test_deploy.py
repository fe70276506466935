"""deploy/: the kustomizations render, pass a current release's schemas, are accepted by the
real API server in the test cluster, and their RBAC grants what it says and no more."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import identities
from .cluster import Cluster, wait_until
from .identities import SERVED, SYSTEM
from .kustomize import render, render_kubectl, render_python
from .manifests import Manifests
from .rest import ApiException, Rest
from .test_realnode import CAPS as REALNODE_CAPS

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE, GPU = DEPLOY / "base", DEPLOY / "overlays" / "gpu"
#: Every kustomization a user may apply: the base and each overlay.
KUSTOMIZATIONS = [
    BASE,
    *sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")),
]
KUSTOMIZATION_IDS = [p.name for p in KUSTOMIZATIONS]
POLICY = DEPLOY / "examples" / "ref-policy.yaml"
Doc = dict[str, Any]


def key(doc: Doc) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def by_key(docs: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    return {key(d): d for d in docs}


def container(docs: list[Doc], deployment: str) -> Doc:
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


#: Where each namespaced object of the base lives: the control plane (the activator, the
#: operator, what only they use) in dormant-system, Pod Security `restricted`; the model
#: workloads, their policies and the Roles that serve them in dormant, `privileged`.
NAMESPACES = {
    ("ServiceAccount", "dormant-activator"): SYSTEM,
    ("ServiceAccount", "dormant-operator"): SYSTEM,
    ("ConfigMap", "dormant-activator"): SYSTEM,
    ("ConfigMap", "dormant-grafana-dashboard"): SYSTEM,
    ("Deployment", "dormant-activator"): SYSTEM,
    ("Deployment", "dormant-operator"): SYSTEM,
    ("Service", "dormant-activator"): SYSTEM,
    ("ServiceAccount", "dormant-model"): SERVED,
    ("Role", "dormant-activator"): SERVED,
    ("Role", "dormant-operator"): SERVED,
    ("RoleBinding", "dormant-activator"): SERVED,
    ("RoleBinding", "dormant-operator"): SERVED,
    ("Deployment", "ref-model"): SERVED,
    ("Service", "ref-model"): SERVED,
    ("PersistentVolumeClaim", "ref-model-state"): SERVED,
}


# -- rendering -----------------------------------------------------------------------------


def test_base_renders_the_whole_system() -> None:
    docs = render(BASE)
    kinds = sorted(key(d)[:1][0] + "/" + d["metadata"]["name"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace/dormant",
            "Namespace/dormant-system",
            "CustomResourceDefinition/scaletozeropolicies.dormant.dev",
            "ServiceAccount/dormant-activator",
            "ServiceAccount/dormant-operator",
            "ServiceAccount/dormant-model",
            "Role/dormant-activator",
            "Role/dormant-operator",
            "RoleBinding/dormant-activator",
            "RoleBinding/dormant-operator",
            "ClusterRole/dormant-operator-policies",
            "ClusterRoleBinding/dormant-operator-policies",
            "ConfigMap/dormant-activator",
            "ConfigMap/dormant-grafana-dashboard",
            "Deployment/dormant-activator",
            "Deployment/dormant-operator",
            "Deployment/ref-model",
            "Service/dormant-activator",
            "Service/ref-model",
            "PersistentVolumeClaim/ref-model-state",
        ]
    )
    namespaced = {(k, name): ns for k, ns, name in map(key, docs) if ns}
    assert namespaced == NAMESPACES
    # The Roles serve dormant and bind the control plane's ServiceAccounts of dormant-system.
    for binding in [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]:
        for subject in binding["subjects"]:
            assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", SYSTEM)
    # The activator and the operator serve dormant's policies, not their own namespace's.
    config = yaml.safe_load(
        by_key(docs)[("ConfigMap", SYSTEM, "dormant-activator")]["data"]["config.yaml"]
    )
    assert config["kubernetes"]["namespace"] == SERVED
    command = container(docs, "dormant-operator")["command"]
    assert command[command.index("--namespace") + 1] == SERVED
    # It reaches the activator's admin port through the Service of its own namespace.
    activator_url = command[command.index("--activator") + 1]
    service = by_key(docs)[("Service", SYSTEM, "dormant-activator")]
    admin = {p["name"]: p["port"] for p in service["spec"]["ports"]}["admin"]
    assert activator_url == f"http://{service['metadata']['name']}:{admin}"
    model = container(docs, "ref-model")
    assert model["command"][:2] == ["dormant", "exec"]
    # exactly the set measured on the real node (tests/kube/test_realnode.py), and the
    # seccomp profile CRIU can dump under
    assert set(model["securityContext"]["capabilities"]["add"]) == set(REALNODE_CAPS)
    pod = by_key(docs)[("Deployment", SERVED, "ref-model")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert "nvidia.com/gpu" not in model["resources"].get("limits", {})


def test_gpu_overlay_asks_for_a_gpu_and_more_grace() -> None:
    base, gpu = by_key(render(BASE)), by_key(render(GPU))
    assert base.keys() == gpu.keys()
    model = container(list(gpu.values()), "ref-model")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert model["command"][model["command"].index("--device") + 1] == "cuda"
    pod = gpu[("Deployment", SERVED, "ref-model")]["spec"]["template"]["spec"]
    base_pod = base[("Deployment", SERVED, "ref-model")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > base_pod["terminationGracePeriodSeconds"]
    # Everything but the model Deployment and its claim is the base, unchanged.
    claim_key = ("PersistentVolumeClaim", SERVED, "ref-model-state")
    for k, doc in base.items():
        if k not in (("Deployment", SERVED, "ref-model"), claim_key):
            assert gpu[k] == doc, k


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_model_memory_is_reserved_for_the_checkpoint(directory: Path) -> None:
    """Issue 17: request 16Gi vs limit 64Gi let the checkpoint's RAM spike arrive during a
    drain, unreserved. The model pod's memory request is its limit."""
    resources = container(render(directory), "ref-model")["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"], resources


def test_gpu_claim_holds_device_memory_snapshots() -> None:
    """Issue 17: the GPU overlay kept the base's 20Gi claim, but a GPU snapshot holds the
    device memory too. The claim holds weights + (keep + 1) x (GPU memory + host memory)."""
    docs = by_key(render(GPU))
    claim = docs[("PersistentVolumeClaim", SERVED, "ref-model-state")]
    sizing = claim["metadata"]["annotations"]
    gpu_memory = _bytes(sizing["dormant.dev/sizing-gpu-memory"])
    weights = _bytes(sizing["dormant.dev/sizing-weights"])
    keep = int(sizing["dormant.dev/sizing-keep"])
    (policy,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    assert keep >= policy["spec"]["checkpoint"]["keep"]
    host = _bytes(container(list(docs.values()), "ref-model")["resources"]["limits"]["memory"])
    assert gpu_memory >= 80 * 2**30  # one 80 GB GPU at the least (H100, A100-80G)
    needed = weights + (keep + 1) * (gpu_memory + host)
    assert _bytes(claim["spec"]["resources"]["requests"]["storage"]) >= needed


def test_monitoring_overlay_scrapes_with_a_metrics_only_token() -> None:
    """Issue 17: the shipped dashboard got no data: /metrics answers 401 without a token.
    The monitoring overlay gives the activator a metrics-only token (never the admin token)
    and a ServiceMonitor that sends it to the activator Service's http port."""
    from activator.config.settings import Settings

    base, mon = by_key(render(BASE)), by_key(render(DEPLOY / "overlays" / "monitoring"))
    (monitor,) = [d for d in mon.values() if d["kind"] == "ServiceMonitor"]
    ((_, _, cm_name),) = [k for k in mon if k[0] == "ConfigMap" and k[2] == "dormant-activator"]
    config = yaml.safe_load(mon[("ConfigMap", SYSTEM, cm_name)]["data"]["config.yaml"])
    before = yaml.safe_load(base[("ConfigMap", SYSTEM, cm_name)]["data"]["config.yaml"])
    assert {k: v for k, v in config.items() if k != "metrics_token_file"} == before
    assert set(config) <= set(Settings.__dataclass_fields__)
    c = container(list(mon.values()), "dormant-activator")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert Path(config["metrics_token_file"]).parent == Path(mounts["metrics-token"])
    pod = mon[("Deployment", SYSTEM, "dormant-activator")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["metrics-token"]["secret"]["secretName"]
    assert secret != volumes["admin-token"]["secret"]["secretName"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["bearerTokenSecret"] == {"name": secret, "key": "token"}
    assert endpoint["path"] == "/metrics"
    service = mon[("Service", SYSTEM, "dormant-activator")]
    # The ServiceMonitor and its token's Secret live beside the Service it selects.
    assert monitor["metadata"]["namespace"] == SYSTEM
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    http = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert config["listen"].endswith(f":{http}")  # /metrics is on the http listener


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl: nothing to compare with")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_python_rendering_matches_kubectl(directory: Path) -> None:
    assert by_key(render_python(directory)) == by_key(render_kubectl(directory))


# -- schemas -------------------------------------------------------------------------------


def _validate(doc: Doc, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def _versions() -> list[str]:
    """The oldest release the validator knows (1.25; the suite's API server checks 1.20), the
    one kubectl here speaks (1.32) and the newest the validator knows."""
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    def number(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    oldest = min(all_versions(), key=number)
    return sorted({oldest, "1.32.0", kubernetes_validate.latest_version()}, key=number)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_manifests_pass_kubernetes_validate(directory: Path) -> None:
    import kubernetes_validate

    # Custom resources of other projects (the Prometheus Operator's ServiceMonitor) have no
    # schema in Kubernetes' own: the API server test below admits them.
    docs = [d for d in render(directory) if not d["apiVersion"].startswith("monitoring.coreos")]
    for version in _versions():
        for doc in docs:
            try:
                _validate(doc, version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{key(doc)} fails the {version} schema: {exc.message} at {list(exc.path)}"
                )
    # The check can fail: a misspelt field is caught in strict mode.
    bad = json.loads(json.dumps(by_key(docs)[("Deployment", SERVED, "ref-model")]))
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad, _versions()[-1])


# -- the real API server -------------------------------------------------------------------


#: A stand-in for the Prometheus Operator's CRD (deploy/overlays/monitoring needs it): the
#: kind only, any fields.
SERVICE_MONITOR_CRD: Doc = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def applied(kube_cluster: Cluster, kube: Rest) -> Iterator[tuple[Manifests, list[Doc]]]:
    """The Namespaces and CRD of deploy/base created for real (they are what the rest needs);
    removed again afterwards so other tests start from a clean cluster."""
    m = Manifests(kube)
    docs = render(BASE)
    real = [d for d in docs if d["kind"] in ("Namespace", "CustomResourceDefinition")]
    for doc in [*real, SERVICE_MONITOR_CRD]:
        m.create(doc, exist_ok=True)
    crd = by_key(docs)[("CustomResourceDefinition", "", "scaletozeropolicies.dormant.dev")]
    wait_until(
        "the ScaleToZeroPolicy CRD to be established",
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in kube.get(m.path(crd, name=True)).get("status", {}).get("conditions", [])
        ),
        timeout=60,
    )
    wait_until(
        "the ServiceMonitor stand-in CRD to be served",
        lambda: m.resource("monitoring.coreos.com/v1", "ServiceMonitor"),
        timeout=60,
    )
    yield m, docs


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_every_manifest_is_accepted_by_the_api_server(
    applied: tuple[Manifests, list[Doc]], directory: Path
) -> None:
    m, _ = applied
    for doc in render(directory):
        if doc["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue  # created for real by the fixture
        try:
            m.create(doc, dry_run=True)
        except ApiException as exc:
            pytest.fail(f"the 1.20 API server refused {key(doc)}: {exc.status} {exc.body}")
    # The example policy, once the CRD serves it.
    (policy,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    created = wait_until(
        "the CRD to serve ScaleToZeroPolicy", lambda: m.create(policy, dry_run=True), timeout=30
    )
    assert isinstance(created, dict) and created["spec"]["targetRef"]["name"] == "ref-model"


def _resource_name(doc: Doc) -> str:
    """What `kubectl apply -o name` prints for a manifest: kind[.group]/name."""
    group = doc["apiVersion"].rpartition("/")[0]
    return f"{doc['kind'].lower()}{'.' + group if group else ''}/{doc['metadata']['name']}"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl here")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_kubectl_applies_every_manifest_to_the_oldest_api_server(
    applied: tuple[Manifests, list[Doc]], kube_cluster: Cluster, directory: Path
) -> None:
    """What the install docs say (`kubectl apply -k`), against the suite's 1.20 API server:
    kubectl 1.32 validates each object against the schemas that server publishes (it has no
    server-side field validation), then the server admits it (a server-side dry run). A field
    1.20 does not know (appArmorProfile, 1.30) fails here as it fails for users."""
    docs = render(directory)
    done = subprocess.run(
        [
            "kubectl",
            f"--kubeconfig={kube_cluster.kubeconfig}",
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl apply refused {directory.name}:\n{done.stderr}"
    applied_names = set(done.stdout.split())
    assert applied_names == {_resource_name(d) for d in docs}, done.stdout


def test_the_crd_rejects_a_policy_without_a_valid_target(
    applied: tuple[Manifests, list[Doc]],
) -> None:
    m, _ = applied
    (policy,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    wait_until(
        "the CRD to serve ScaleToZeroPolicy", lambda: m.create(policy, dry_run=True), timeout=30
    )
    bad = json.loads(json.dumps(policy))
    bad["spec"]["targetRef"]["kind"] = "DaemonSet"
    with pytest.raises(ApiException) as refused:
        m.create(bad, dry_run=True)
    assert refused.value.status == 422 and "targetRef.kind" in (refused.value.body or "")


# -- RBAC ----------------------------------------------------------------------------------


def _can(
    kube: Rest,
    sa: str,
    verb: str,
    resource: str,
    group: str = "",
    sub: str = "",
    namespace: str = SERVED,
    home: str = SYSTEM,
) -> bool:
    """May the service account HOME/SA do VERB on RESOURCE/SUB in NAMESPACE?"""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{home}:{sa}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{home}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": sub,
            },
        },
    }
    out = kube.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(out["status"].get("allowed"))


NEEDS = {
    "dormant-operator": [
        ("watch", "scaletozeropolicies", "dormant.dev", ""),
        ("patch", "scaletozeropolicies", "dormant.dev", ""),  # kopf's annotations, finalizer
        ("patch", "scaletozeropolicies", "dormant.dev", "status"),
        ("get", "deployments", "apps", ""),
        ("get", "statefulsets", "apps", ""),
        ("get", "jobs", "batch", ""),
        ("patch", "deployments", "apps", "scale"),  # a deleted policy's target given back
        ("watch", "pods", "", ""),
        ("watch", "services", "", ""),
        ("create", "services", "", ""),
        ("patch", "services", "", ""),  # a deleted policy's Service given its selector back
        ("create", "endpoints", "", ""),
        ("patch", "endpoints", "", ""),
        ("create", "events", "", ""),
        ("create", "leases", "coordination.k8s.io", ""),
    ],
    "dormant-activator": [
        ("watch", "scaletozeropolicies", "dormant.dev", ""),
        ("patch", "deployments", "apps", "scale"),
        ("patch", "statefulsets", "apps", "scale"),
        ("list", "pods", "", ""),
        ("patch", "services", "", ""),  # the route annotation
        ("get", "endpoints", "", ""),
        ("get", "leases", "coordination.k8s.io", ""),  # one owner per policy
        ("create", "leases", "coordination.k8s.io", ""),
        ("update", "leases", "coordination.k8s.io", ""),
        ("patch", "leases", "coordination.k8s.io", ""),
    ],
}
REFUSED = {
    "dormant-operator": [
        ("get", "secrets", "", ""),
        ("patch", "deployments", "apps", ""),
        ("delete", "deployments", "apps", ""),
        ("create", "pods", "", "exec"),
        ("create", "pods", "", "eviction"),
        ("delete", "pods", "", ""),
        ("delete", "services", "", ""),
        ("delete", "endpoints", "", ""),
        ("create", "scaletozeropolicies", "dormant.dev", ""),
        ("delete", "leases", "coordination.k8s.io", ""),
    ],
    "dormant-activator": [
        ("get", "secrets", "", ""),
        ("update", "endpoints", "", ""),  # the operator's job
        ("patch", "endpoints", "", ""),
        ("create", "services", "", ""),
        ("patch", "scaletozeropolicies", "dormant.dev", ""),
        ("patch", "scaletozeropolicies", "dormant.dev", "status"),
        ("patch", "deployments", "apps", ""),
        ("create", "events", "", ""),
    ],
    "dormant-model": [
        ("get", "pods", "", ""),
        ("get", "secrets", "", ""),
        ("list", "scaletozeropolicies", "dormant.dev", ""),
    ],
}


#: The operator's one write outside its namespace (the status of a policy no install serves).
CLUSTER_WIDE = ("dormant-operator", "patch", "scaletozeropolicies", "status")


@pytest.fixture
def system(kube: Rest, namespace: str) -> Iterator[str]:
    """The control plane's namespace beside the test's (which plays dormant, the served one):
    dormant-system's ServiceAccounts go here."""
    name = f"{namespace}-sys"
    kube.post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    with contextlib.suppress(ApiException):
        kube.delete(f"/api/v1/namespaces/{name}")


def _home(sa: str, served: str, system: str) -> str:
    """The namespace of a ServiceAccount of the base: the model's is the served one."""
    return served if sa == "dormant-model" else system


def _missing(kube: Rest, served: str, system: str, namespace: str) -> list[str]:
    return [
        f"{sa} cannot {verb} {res}/{sub} in {namespace}"
        for sa, wants in NEEDS.items()
        for verb, res, group, sub in wants
        if not _can(kube, sa, verb, res, group, sub, namespace, _home(sa, served, system))
    ]


def test_rbac_grants_each_identity_what_it_needs_in_the_served_namespace_only(
    applied: tuple[Manifests, list[Doc]], kube: Rest, namespace: str, system: str
) -> None:
    """The base's RBAC installed for real in two namespaces, the served one (`home`, playing
    dormant: the Roles) and the control plane's (`system`, playing dormant-system: the
    activator's and the operator's ServiceAccounts), asked through SubjectAccessReviews: each
    need is granted in the served namespace and nowhere else, not even in the control plane's
    own namespace; the refusals hold."""
    home = namespace
    created = identities.install(kube, home, system=system)
    try:
        # Each role and binding reaches the authorizer on its own: wait for all of them.
        wait_until(
            "RBAC to take effect",
            lambda: not _missing(kube, home, system, home),
            timeout=30,
            diagnose=lambda: str(_missing(kube, home, system, home)),
        )
        for other in ("kube-system", "default", system):
            granted = [
                f"{sa} may {verb} {res}/{sub} in {other}"
                for sa, wants in NEEDS.items()
                for verb, res, group, sub in wants
                if _can(kube, sa, verb, res, group, sub, other, _home(sa, home, system))
                and (sa, verb, res, sub) != CLUSTER_WIDE
            ]
            # The one cluster-wide grant: the operator lists every namespace's policies (to
            # say so in the status of a policy no install serves).
            assert granted == [], granted
            assert _can(
                kube,
                "dormant-operator",
                "list",
                "scaletozeropolicies",
                "dormant.dev",
                namespace=other,
                home=system,
            )
            assert _can(
                kube,
                "dormant-operator",
                "patch",
                "scaletozeropolicies",
                "dormant.dev",
                "status",
                namespace=other,
                home=system,
            )
        for sa, wants in REFUSED.items():
            for verb, res, group, sub in wants:
                for ns in (home, system):
                    assert not _can(kube, sa, verb, res, group, sub, ns, _home(sa, home, system)), (
                        f"{sa} may {verb} {res}/{sub} in {ns}"
                    )
        # Nodes are cluster-scoped and neither needs them: an eviction's SIGTERM is what
        # makes a pod checkpoint, and the operator follows the pods, not the nodes.
        for sa in ("dormant-operator", "dormant-activator"):
            assert not _can(kube, sa, "watch", "nodes", namespace="", home=system)
            assert not _can(kube, sa, "list", "pods", namespace="", home=system)
    finally:
        identities.uninstall(kube, created)


def test_cluster_wide_overlay_grants_the_same_rules_everywhere(
    applied: tuple[Manifests, list[Doc]], kube: Rest, namespace: str, system: str
) -> None:
    base = {d["metadata"]["name"]: d["rules"] for d in render(BASE) if d["kind"] == "Role"}
    wide = render(DEPLOY / "overlays" / "cluster-wide")
    assert not [d for d in wide if d["kind"] in ("Role", "RoleBinding")]
    roles = {d["metadata"]["name"]: d["rules"] for d in wide if d["kind"] == "ClusterRole"}
    assert {k: roles[k] for k in base} == base
    home = namespace
    created = identities.install(kube, home, DEPLOY / "overlays" / "cluster-wide", system)
    try:
        wait_until(
            "cluster-wide RBAC to take effect in another namespace",
            lambda: not _missing(kube, home, system, "default"),
            timeout=30,
            diagnose=lambda: str(_missing(kube, home, system, "default")),
        )
    finally:
        identities.uninstall(kube, created)


def _status(call: Any) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_rbac_real_writes_with_the_service_accounts_own_tokens(
    applied: tuple[Manifests, list[Doc]],
    kube_cluster: Cluster,
    kube: Rest,
    namespace: str,
    system: str,
    tmp_path: Path,
) -> None:
    """Not a review but the calls themselves, authenticated with tokens the TokenRequest API
    issued to the service accounts of the control plane's namespace (`system`): what each
    component must do works in the served namespace (`home`); the writes issue 17 found
    possible (scaling kube-system's Deployments, patching any Service, writing
    `default/kubernetes`'s Endpoints) are refused with 403, and so is all of it in the control
    plane's own namespace."""
    home = namespace
    created = identities.install(kube, home, system=system)
    try:
        for ns in (home, "kube-system"):
            kube.post(
                f"/apis/apps/v1/namespaces/{ns}/deployments",
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": f"victim-{home}" if ns != home else "app"},
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {"app": "x"}},
                        "template": {
                            "metadata": {"labels": {"app": "x"}},
                            "spec": {"containers": [{"name": "x", "image": "x"}]},
                        },
                    },
                },
            )
            kube.post(
                f"/api/v1/namespaces/{ns}/services",
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"victim-{home}" if ns != home else "app"},
                    "spec": {"ports": [{"port": 80}]},
                },
            )
        activator = identities.rest_as(
            kube_cluster, kube, system, "dormant-activator", tmp_path, served=home
        )
        operator = identities.rest_as(
            kube_cluster, kube, system, "dormant-operator", tmp_path, served=home
        )
        scale = {"spec": {"replicas": 0}}
        note = {"metadata": {"annotations": {"dormant.dev/route": "activator"}}}
        victim = f"victim-{home}"
        endpoints = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "app"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}],
        }
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "dormant-operator"},
            "spec": {"holderIdentity": "test", "leaseDurationSeconds": 15},
        }
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{home}/leases"
        works = {
            "activator scales the served namespace's target": lambda: activator.patch(
                f"/apis/apps/v1/namespaces/{home}/deployments/app/scale", scale
            ),
            "activator annotates the served namespace's Service": lambda: activator.patch(
                f"/api/v1/namespaces/{home}/services/app", note
            ),
            "activator takes a policy's Lease": lambda: activator.post(
                leases, {**lease, "metadata": {"name": "dormant-policy-app"}}
            ),
            "operator creates Endpoints": lambda: operator.post(
                f"/api/v1/namespaces/{home}/endpoints", endpoints
            ),
            "operator patches Endpoints": lambda: operator.patch(
                f"/api/v1/namespaces/{home}/endpoints/app", {"subsets": endpoints["subsets"]}
            ),
            "operator gives a Service its selector back": lambda: operator.patch(
                f"/api/v1/namespaces/{home}/services/app", {"spec": {"selector": {"app": "x"}}}
            ),
            "operator scales a target back": lambda: operator.patch(
                f"/apis/apps/v1/namespaces/{home}/deployments/app/scale", scale
            ),
            "operator creates its Lease": lambda: operator.post(leases, lease),
            "operator renews its Lease": lambda: operator.put(
                f"{leases}/dormant-operator", operator.get(f"{leases}/dormant-operator")
            ),
            "operator lists every namespace's policies": lambda: operator.get(
                "/apis/dormant.dev/v1alpha1/scaletozeropolicies"
            ),
        }
        refused = {
            "activator scales a kube-system Deployment": lambda: activator.patch(
                f"/apis/apps/v1/namespaces/kube-system/deployments/{victim}/scale", scale
            ),
            "activator patches a kube-system Service": lambda: activator.patch(
                f"/api/v1/namespaces/kube-system/services/{victim}", note
            ),
            "activator writes Endpoints": lambda: activator.patch(
                f"/api/v1/namespaces/{home}/endpoints/app", {"subsets": []}
            ),
            "operator writes default/kubernetes's Endpoints": lambda: operator.patch(
                "/api/v1/namespaces/default/endpoints/kubernetes", {"subsets": []}
            ),
            "operator creates Endpoints in default": lambda: operator.post(
                "/api/v1/namespaces/default/endpoints", endpoints
            ),
            "operator patches a kube-system Service": lambda: operator.patch(
                f"/api/v1/namespaces/kube-system/services/{victim}", note
            ),
            "operator scales a kube-system Deployment": lambda: operator.patch(
                f"/apis/apps/v1/namespaces/kube-system/deployments/{victim}/scale", scale
            ),
            "operator reads a Secret": lambda: operator.get(f"/api/v1/namespaces/{home}/secrets"),
            "operator lists every namespace's pods": lambda: operator.get("/api/v1/pods"),
            "operator updates another Lease": lambda: operator.put(
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x", lease
            ),
            # Nothing at all in their own namespace: their Secrets and config are volumes.
            "operator reads its own namespace's Secrets": lambda: operator.get(
                f"/api/v1/namespaces/{system}/secrets"
            ),
            "operator takes a Lease in its own namespace": lambda: operator.post(
                f"/apis/coordination.k8s.io/v1/namespaces/{system}/leases", lease
            ),
            "activator reads its own namespace's ConfigMaps": lambda: activator.get(
                f"/api/v1/namespaces/{system}/configmaps"
            ),
            "activator scales in its own namespace": lambda: activator.patch(
                f"/apis/apps/v1/namespaces/{system}/deployments/dormant-activator/scale", scale
            ),
        }
        outcomes = {what: _status(call) for what, call in works.items()}
        assert all(code == 200 for code in outcomes.values()), outcomes
        outcomes = {what: _status(call) for what, call in refused.items()}
        assert all(code == 403 for code in outcomes.values()), outcomes
    finally:
        identities.uninstall(kube, created)
        for kind, path in (("deployments", "/apis/apps/v1"), ("services", "/api/v1")):
            with contextlib.suppress(ApiException):
                kube.delete(f"{path}/namespaces/kube-system/{kind}/victim-{home}")


# -- the activator's config and the dashboard ----------------------------------------------


def test_activator_config_matches_its_deployment() -> None:
    from activator.config.settings import Settings

    docs = render(BASE)
    config = yaml.safe_load(
        by_key(docs)[("ConfigMap", SYSTEM, "dormant-activator")]["data"]["config.yaml"]
    )
    fields = set(Settings.__dataclass_fields__)
    assert set(config) <= fields, f"unknown settings: {set(config) - fields}"
    c = container(docs, "dormant-activator")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert config["listen"] == f"0.0.0.0:{ports['http']}"
    assert config["admin_listen"] == f"0.0.0.0:{ports['admin']}"
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    config_path = c["command"][c["command"].index("-c") + 1]
    assert config_path == f"{mounts['config']}/config.yaml"
    assert Path(config["admin_token_file"]).parent == Path(mounts["admin-token"])
    # A directory the activator makes (0700) in the state volume: the volume's own root is
    # group-writable under fsGroup, which the activator refuses as a state_dir.
    assert Path(config["state_dir"]).parent == Path(mounts["state"])


def test_dashboard_shows_every_activator_metric_and_only_those() -> None:
    from activator.metrics import Metrics

    docs = render(BASE)
    cm = by_key(docs)[("ConfigMap", SYSTEM, "dormant-grafana-dashboard")]
    dashboard = json.loads(cm["data"]["dormant-activator.json"])
    assert dashboard == json.loads((BASE / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"dormant_\w+", e)
    }
    real = set()
    for family in Metrics().registry.collect():
        real.add(family.name + ("_total" if family.type == "counter" else ""))
    assert used == real, f"only in the dashboard: {used - real}; not shown: {real - used}"


def test_a_policy_is_stored_with_its_status_and_printer_columns(
    applied: tuple[Manifests, list[Doc]], kube: Rest, namespace: str
) -> None:
    m, _ = applied
    (policy,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    policy["metadata"]["namespace"] = namespace
    wait_until("the CRD to serve ScaleToZeroPolicy", lambda: m.create(policy, dry_run=True))
    created = m.create(policy)  # a real custom-resource write (crashed 1.20 before reflect2 1.0.2)
    path = m.path(policy, name=True)
    status = {"phase": "Hibernated", "lastWake": {"path": "restore", "seconds": 0.4}}
    kube.patch(f"{path}/status", {"status": status})
    stored = kube.get(path)
    assert stored["status"] == status and stored["spec"] == created["spec"]
    # The status subresource ignores status in a write to the main resource, and vice versa.
    kube.patch(path, {"status": {"phase": "Ready"}, "spec": {"idleAfter": "10m"}})
    stored = kube.get(path)
    assert stored["status"]["phase"] == "Hibernated" and stored["spec"]["idleAfter"] == "10m"
    table = _table(kube, path)
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:4] == ["Name", "Target", "Phase", "Last wake"], columns
    assert table["rows"][0]["cells"][1:4] == ["ref-model", "Hibernated", "restore"]


def _table(kube: Rest, path: str) -> dict[str, Any]:
    """What `kubectl get` shows: the server-side Table with the CRD's printer columns."""
    method, url, headers, body, post = kube.api.param_serialize(
        "GET",
        path,
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    resp = kube.api.call_api(method, url, headers, body, post, _request_timeout=30)
    data = resp.read()
    assert resp.status == 200, data
    return dict(json.loads(data))
