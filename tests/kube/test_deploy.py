"""deploy/: the kustomizations render, pass a current release's schemas, are accepted by the
real API server in the test cluster, and their RBAC grants what it says and no more."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import Cluster, wait_until
from .kustomize import render, render_kubectl, render_python
from .manifests import Manifests
from .rest import ApiException, Rest

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE, GPU = DEPLOY / "base", DEPLOY / "overlays" / "gpu"
POLICY = DEPLOY / "examples" / "ref-policy.yaml"
Doc = dict[str, Any]


def key(doc: Doc) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def by_key(docs: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    return {key(d): d for d in docs}


def container(docs: list[Doc], deployment: str) -> Doc:
    dep = by_key(docs)[("Deployment", "dormant", deployment)]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


# -- rendering -----------------------------------------------------------------------------


def test_base_renders_the_whole_system() -> None:
    docs = render(BASE)
    kinds = sorted(key(d)[:1][0] + "/" + d["metadata"]["name"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace/dormant",
            "CustomResourceDefinition/scaletozeropolicies.dormant.dev",
            "ServiceAccount/dormant-activator",
            "ServiceAccount/dormant-operator",
            "ServiceAccount/dormant-model",
            "ClusterRole/dormant-activator",
            "ClusterRole/dormant-operator",
            "ClusterRoleBinding/dormant-activator",
            "ClusterRoleBinding/dormant-operator",
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
    for doc in docs:
        if doc["kind"] not in (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            assert doc["metadata"]["namespace"] == "dormant", key(doc)
    model = container(docs, "ref-model")
    assert model["command"][:2] == ["dormant", "exec"]
    assert {"CHECKPOINT_RESTORE", "SYS_PTRACE", "SYS_ADMIN"} <= set(
        model["securityContext"]["capabilities"]["add"]
    )
    assert "nvidia.com/gpu" not in model["resources"].get("limits", {})


def test_gpu_overlay_asks_for_a_gpu_and_more_grace() -> None:
    base, gpu = by_key(render(BASE)), by_key(render(GPU))
    assert base.keys() == gpu.keys()
    model = container(list(gpu.values()), "ref-model")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert model["command"][model["command"].index("--device") + 1] == "cuda"
    pod = gpu[("Deployment", "dormant", "ref-model")]["spec"]["template"]["spec"]
    base_pod = base[("Deployment", "dormant", "ref-model")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > base_pod["terminationGracePeriodSeconds"]
    # Everything but the model Deployment is the base, unchanged.
    for k, doc in base.items():
        if k != ("Deployment", "dormant", "ref-model"):
            assert gpu[k] == doc, k


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl: nothing to compare with")
@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_python_rendering_matches_kubectl(directory: Path) -> None:
    assert by_key(render_python(directory)) == by_key(render_kubectl(directory))


# -- schemas -------------------------------------------------------------------------------


def _validate(doc: Doc, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def _versions() -> list[str]:
    """The release kubectl here speaks (1.32) and the newest the validator knows."""
    import kubernetes_validate

    return sorted({"1.32.0", kubernetes_validate.latest_version()})


@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_manifests_pass_kubernetes_validate(directory: Path) -> None:
    import kubernetes_validate

    docs = render(directory)
    for version in _versions():
        for doc in docs:
            try:
                _validate(doc, version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{key(doc)} fails the {version} schema: {exc.message} at {list(exc.path)}"
                )
    # The check can fail: a misspelt field is caught in strict mode.
    bad = json.loads(json.dumps(by_key(docs)[("Deployment", "dormant", "ref-model")]))
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad, _versions()[-1])


# -- the real API server -------------------------------------------------------------------


@pytest.fixture
def applied(kube_cluster: Cluster, kube: Rest) -> Iterator[tuple[Manifests, list[Doc]]]:
    """The Namespace and CRD of deploy/base created for real (they are what the rest needs);
    removed again afterwards so other tests start from a clean cluster."""
    m = Manifests(kube)
    docs = render(BASE)
    real = [d for d in docs if d["kind"] in ("Namespace", "CustomResourceDefinition")]
    for doc in real:
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
    yield m, docs


@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
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
    namespace: str = "models",
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:dormant:{sa}",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:dormant",
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


def test_rbac_grants_each_identity_what_it_needs_and_no_more(
    applied: tuple[Manifests, list[Doc]], kube: Rest
) -> None:
    m, docs = applied
    rbac = [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for doc in rbac:  # real objects: the authorizer must see them
        m.delete(doc)
        m.create(doc)
    try:
        needs = {
            "dormant-operator": [
                ("watch", "scaletozeropolicies", "dormant.dev", ""),
                ("patch", "scaletozeropolicies", "dormant.dev", ""),  # kopf's annotations
                ("patch", "scaletozeropolicies", "dormant.dev", "status"),
                ("get", "deployments", "apps", ""),
                ("get", "statefulsets", "apps", ""),
                ("get", "jobs", "batch", ""),
                ("watch", "pods", "", ""),
                ("watch", "services", "", ""),
                ("create", "services", "", ""),
                ("create", "endpoints", "", ""),
                ("patch", "endpoints", "", ""),
                ("create", "events", "", ""),
            ],
            "dormant-activator": [
                ("watch", "scaletozeropolicies", "dormant.dev", ""),
                ("patch", "deployments", "apps", "scale"),
                ("patch", "statefulsets", "apps", "scale"),
                ("list", "pods", "", ""),
                ("patch", "services", "", ""),  # the route annotation
                ("get", "endpoints", "", ""),
            ],
        }
        refused = {
            "dormant-operator": [
                ("get", "secrets", "", ""),
                ("patch", "deployments", "apps", "scale"),  # the activator scales
                ("patch", "deployments", "apps", ""),
                ("delete", "deployments", "apps", ""),
                ("create", "pods", "", "exec"),
                ("create", "pods", "", "eviction"),
                ("delete", "pods", "", ""),
                ("patch", "services", "", ""),  # creates a missing one, never changes one
                ("delete", "endpoints", "", ""),
                ("create", "scaletozeropolicies", "dormant.dev", ""),
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

        def missing() -> list[str]:
            return [
                f"{sa} cannot {verb} {res}/{sub}"
                for sa, wants in needs.items()
                for verb, res, group, sub in wants
                if not _can(kube, sa, verb, res, group, sub)
            ]

        # Each role and binding reaches the authorizer on its own: wait for all of them.
        wait_until(
            "RBAC to take effect",
            lambda: not missing(),
            timeout=30,
            diagnose=lambda: str(missing()),
        )
        for sa, wants in refused.items():
            for verb, res, group, sub in wants:
                assert not _can(kube, sa, verb, res, group, sub), f"{sa} may {verb} {res}/{sub}"
        # Nodes are cluster-scoped and neither needs them: an eviction's SIGTERM is what
        # makes a pod checkpoint, and the operator follows the pods, not the nodes.
        for sa in ("dormant-operator", "dormant-activator"):
            assert not _can(kube, sa, "watch", "nodes", namespace="")
    finally:
        for doc in rbac:
            m.delete(doc)


# -- the activator's config and the dashboard ----------------------------------------------


def test_activator_config_matches_its_deployment() -> None:
    from activator.config.settings import Settings

    docs = render(BASE)
    config = yaml.safe_load(
        by_key(docs)[("ConfigMap", "dormant", "dormant-activator")]["data"]["config.yaml"]
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
    assert config["state_dir"] == mounts["state"]


def test_dashboard_shows_every_activator_metric_and_only_those() -> None:
    from activator.metrics import Metrics

    docs = render(BASE)
    cm = by_key(docs)[("ConfigMap", "dormant", "dormant-grafana-dashboard")]
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
