"""deploy.plan: what the cluster should look like for a policy, as table tests (pure: no
cluster, no clock). The same rules run against a real API server in
tests/kube/test_scale_to_zero.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from activator.config.policy import parse_policy
from deploy.plan import Observed, Plan, plan, template_problems

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "deploy" / "examples" / "ref-policy.yaml"
NOW = "2026-11-30T10:00:00Z"
ACTIVATOR = "10.244.1.1:8080"
Doc = dict[str, Any]


def policy(status: Doc | None = None, **spec: Any) -> Doc:
    (doc,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    doc["metadata"].update({"uid": "u-1", "generation": 3})
    doc["spec"].update(spec)
    if status is not None:
        doc["status"] = status
    return dict(doc)


def target(claim: str = "ref-model-state", command: list[str] | None = None) -> Doc:
    argv = command or ["dormant", "exec", "--snapshots", "/s", "--", "python", "-m", "x"]
    return {
        "spec": {
            "selector": {"matchLabels": {"app": "ref"}},
            "template": {
                "spec": {
                    "containers": [{"name": "model", "command": argv}],
                    "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": claim}}],
                }
            },
        }
    }


def service(
    route: str | None = "pods",
    selector: Doc | None = None,
    probed: str = "10.244.1.2,10.244.1.3",
) -> Doc:
    annotations = {"dormant.dev/activator": ACTIVATOR}
    if route is not None:
        annotations["dormant.dev/route"] = route
    if route == "pods":
        annotations["dormant.dev/pod-ips"] = probed
    spec: Doc = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    if selector:
        spec["selector"] = selector
    return {"metadata": {"name": "ref-model", "annotations": annotations}, "spec": spec}


def pod(name: str, ip: str, ready: bool = True, terminating: bool = False) -> Doc:
    meta: Doc = {"name": name, "namespace": "dormant", "uid": f"uid-{name}"}
    if terminating:
        meta["deletionTimestamp"] = NOW
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-a"},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def endpoints(*addresses: str) -> Doc:
    subsets = []
    for address in addresses:
        ip, port = address.rsplit(":", 1)
        subsets.append(
            {
                "addresses": [{"ip": ip}],
                "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
            }
        )
    return {"metadata": {"name": "ref-model"}, "subsets": subsets}


def observe(doc: Doc | None = None, **changes: Any) -> Observed:
    doc = doc or policy()
    base: Doc = {
        "policy": doc,
        "parsed": None if "parsed" in changes else parse_policy(copy.deepcopy(doc)),
        "target": target(),
        "service": service(),
        "endpoints": endpoints(ACTIVATOR),
        "pods": [pod("a", "10.244.1.2")],
        "activator": {
            "state": "ready",
            "reason": "boot",
            "last_wake": {"path": "boot", "seconds": 3.1},
        },
        "now": NOW,
    }
    return Observed(**{**base, **changes})


def routed(result: Plan) -> set[str] | None:
    """Where the planned Endpoints point (None: no write planned)."""
    if result.endpoints is None:
        return None
    return {
        f"{a['ip']}:{p['port']}"
        for s in result.endpoints["subsets"]
        for a in s["addresses"]
        for p in s["ports"]
    }


# -- the Endpoints rule ----------------------------------------------------------------------


def test_a_replacement_pod_waits_for_the_activators_own_probe() -> None:
    """After an eviction the replacement is Ready, but the activator has not probed it yet:
    the Endpoints stay on the activator until it has (and names the pod's IP)."""
    replacement = [pod("b", "10.244.1.9")]
    evicted = endpoints("10.244.1.2:8000")
    before = plan(
        observe(service=service("pods", probed="10.244.1.2"), pods=replacement, endpoints=evicted)
    )
    assert routed(before) == {ACTIVATOR} and before.status["route"] == "activator"
    probed = service("pods", probed="10.244.1.9")
    after = plan(observe(service=probed, pods=replacement, endpoints=endpoints(ACTIVATOR)))
    assert routed(after) == {"10.244.1.9:8000"} and after.status["route"] == "pods"


@pytest.mark.parametrize(
    ("route", "pods", "current", "expected", "where"),
    [
        ("pods", [pod("a", "10.244.1.2")], endpoints(ACTIVATOR), {"10.244.1.2:8000"}, "pods"),
        (
            "pods",
            [pod("b", "10.244.1.3"), pod("a", "10.244.1.2")],
            endpoints(ACTIVATOR),
            {"10.244.1.2:8000", "10.244.1.3:8000"},
            "pods",
        ),
        (
            "pods",
            [pod("a", "10.244.1.2", terminating=True)],
            endpoints("10.244.1.2:8000"),
            {ACTIVATOR},
            "activator",
        ),
        (
            "pods",
            [pod("a", "10.244.1.2", ready=False)],
            endpoints("10.244.1.2:8000"),
            {ACTIVATOR},
            "activator",
        ),
        ("pods", [], endpoints("10.244.1.2:8000"), {ACTIVATOR}, "activator"),
        (
            "activator",
            [pod("a", "10.244.1.2")],
            endpoints("10.244.1.2:8000"),
            {ACTIVATOR},
            "activator",
        ),
        (None, [pod("a", "10.244.1.2")], endpoints("10.244.1.2:8000"), {ACTIVATOR}, "activator"),
        ("pods", [pod("a", "10.244.1.2")], endpoints("10.244.1.2:8000"), None, "pods"),  # as is
        ("activator", [], endpoints(ACTIVATOR), None, "activator"),  # as is
        ("pods", [pod("a", "10.244.1.2")], None, {"10.244.1.2:8000"}, "pods"),  # created
    ],
    ids=[
        "pods-ready",
        "two-ready-pods",
        "terminating-never",
        "not-ready-never",
        "no-pods",
        "route-activator",
        "no-route-yet",
        "unchanged-pods",
        "unchanged-activator",
        "missing-endpoints",
    ],
)
def test_endpoints_follow_the_route_and_readiness(
    route: str | None, pods: list[Doc], current: Doc | None, expected: set[str] | None, where: str
) -> None:
    result = plan(observe(service=service(route), pods=pods, endpoints=current))
    assert routed(result) == expected
    assert result.status["route"] == where
    if result.endpoints is not None:
        assert result.endpoints["metadata"]["labels"] == {"dormant.dev/policy": "ref"}
        ports = result.endpoints["subsets"][0]["ports"]
        assert [p["name"] for p in ports] == ["http"]  # the Service's port names
        assert any(e.reason == "Routed" for e in result.events)
    else:
        assert not any(e.reason == "Routed" for e in result.events)


def test_pod_addresses_name_their_pods() -> None:
    result = plan(observe(endpoints=endpoints(ACTIVATOR)))
    assert result.endpoints is not None
    (address,) = result.endpoints["subsets"][0]["addresses"]
    assert address["targetRef"] == {
        "kind": "Pod",
        "name": "a",
        "namespace": "dormant",
        "uid": "uid-a",
    }
    assert address["nodeName"] == "node-a"


def test_without_the_activators_address_nothing_is_routed() -> None:
    bare = {"metadata": {"name": "ref-model"}, "spec": {"ports": [{"name": "http", "port": 80}]}}
    result = plan(observe(service=bare, endpoints=None))
    assert result.endpoints is not None and result.endpoints["subsets"] == []


def test_a_missing_service_is_created_selector_less_and_owned_by_the_policy() -> None:
    result = plan(observe(service=None, endpoints=None))
    assert result.service is not None
    assert "selector" not in result.service["spec"]
    assert result.service["spec"]["ports"] == [{"name": "http", "port": 8000, "protocol": "TCP"}]
    (owner,) = result.service["metadata"]["ownerReferences"]
    assert owner["kind"] == "ScaleToZeroPolicy" and owner["uid"] == "u-1"
    assert result.endpoints is not None and result.endpoints["subsets"] == []


def test_a_service_with_a_selector_is_not_touched() -> None:
    result = plan(observe(service=service("pods", selector={"app": "ref"})))
    assert result.endpoints is None and result.service is None
    assert result.status["phase"] == "Degraded"
    assert "has a selector" in result.status["message"]


# -- the status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "pods", "phase"),
    [
        ("ready", [pod("a", "10.244.1.2")], "Ready"),
        ("starting", [pod("a", "10.244.1.2", ready=False)], "Waking"),
        ("restoring", [], "Waking"),
        ("draining", [pod("a", "10.244.1.2")], "Hibernating"),
        ("checkpointing", [pod("a", "10.244.1.2")], "Hibernating"),
        ("hibernated", [], "Hibernated"),
        ("cold", [], "Hibernated"),
        ("cold", [pod("a", "10.244.1.2")], "Waking"),  # a new workload takes a pod over
        ("failed", [pod("b", "10.244.1.3", ready=False)], "Waking"),  # an eviction's replacement
        ("failed", [], "Failed"),
        ("suspended", [pod("a", "10.244.1.2")], "Suspended"),
    ],
)
def test_the_phase_comes_from_the_activators_state(state: str, pods: list[Doc], phase: str) -> None:
    view = {"state": state, "reason": "why", "last_error": "boom" if state == "failed" else ""}
    result = plan(observe(activator=view, pods=pods))
    assert result.status["phase"] == phase
    conditions = {c["type"]: c["status"] for c in result.status["conditions"]}
    assert conditions["Ready"] == ("True" if phase == "Ready" else "False")
    assert conditions["Hibernated"] == ("True" if phase == "Hibernated" else "False")
    assert conditions["Waking"] == ("True" if phase == "Waking" else "False")
    if phase == "Failed":
        assert result.status["message"] == "boom"


def test_status_carries_the_last_wake_snapshot_and_generation() -> None:
    view = {
        "state": "hibernated",
        "reason": "snapshot s-1",
        "last_wake": {
            "path": "restore",
            "seconds": 0.41,
            "phases": {"scaled": 0.01, "scheduled": 0.05, "running": 0.2, "ready": 0.4},
        },
        "last_checkpoint": {"snapshot": "s-1", "bytes": 1234, "seconds": 1.5},
    }
    status = plan(observe(activator=view, pods=[])).status
    assert status["observedGeneration"] == 3
    assert status["lastWake"] == {
        "path": "restore",
        "seconds": 0.41,
        "phases": {"scaled": 0.01, "scheduled": 0.05, "running": 0.2, "ready": 0.4},
    }
    assert status["lastSnapshot"] == {"id": "s-1", "bytes": 1234, "seconds": 1.5}
    snapshot = next(c for c in status["conditions"] if c["type"] == "SnapshotAvailable")
    assert snapshot["status"] == "True" and snapshot["message"] == "snapshot s-1"


def test_a_snapshot_stays_in_status_when_the_activator_forgot_it() -> None:
    previous = {"phase": "Hibernated", "lastSnapshot": {"id": "s-0", "bytes": 9, "seconds": 1.0}}
    status = plan(observe(policy(status=previous), activator={"state": "cold"}, pods=[])).status
    assert status["lastSnapshot"]["id"] == "s-0"


def test_without_the_activator_it_is_pending_and_says_why() -> None:
    status = plan(observe(activator=None, activator_problem="it does not list it yet")).status
    assert status["phase"] == "Pending"
    assert status["message"] == "the activator does not serve it yet (it does not list it yet)"


def test_no_empty_strings_in_status() -> None:
    """kube-apiserver 1.20 reads "" in a merge patch as null and refuses the patch."""

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    status = plan(observe(activator={"state": "ready", "reason": ""})).status
    assert "" not in strings(status)
    assert "message" not in status


def test_unchanged_conditions_keep_their_transition_time() -> None:
    first = plan(observe()).status
    later = plan(observe(policy(status=first), now="2026-11-30T11:00:00Z")).status
    assert later["conditions"] == first["conditions"]
    hibernated = plan(
        observe(
            policy(status=first),
            activator={"state": "hibernated"},
            pods=[],
            now="2026-11-30T11:00:00Z",
        )
    ).status
    times = {c["type"]: c["lastTransitionTime"] for c in hibernated["conditions"]}
    assert times["Ready"] == "2026-11-30T11:00:00Z" and times["Degraded"] == NOW


# -- invalid policies --------------------------------------------------------------------------


def test_a_policy_that_cannot_be_parsed_is_degraded_and_touches_nothing() -> None:
    doc = policy(idleAfter="soon")
    result = plan(observe(doc, parsed=None, problem="spec.idleAfter: expected a duration"))
    assert result.service is None and result.endpoints is None
    assert result.status["phase"] == "Degraded"
    assert result.status["message"] == "spec.idleAfter: expected a duration"
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidPolicy"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidPolicy")]
    # the same problem again: no second Event
    again = plan(
        observe(
            policy(status=result.status), parsed=None, problem="spec.idleAfter: expected a duration"
        )
    )
    assert again.events == []


def test_a_missing_target_is_degraded() -> None:
    result = plan(observe(target=None))
    assert result.status["phase"] == "Degraded" and result.endpoints is None
    assert result.status["message"] == "Deployment ref-model not found in namespace dormant"


def test_a_template_that_disagrees_is_reported_but_still_served() -> None:
    result = plan(observe(target=target(claim="other")))
    assert result.status["phase"] == "Ready"
    assert "do not mount claim 'ref-model-state'" in result.status["message"]
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"


@pytest.mark.parametrize(
    ("command", "spec", "problem"),
    [
        (["python", "-m", "x"], {}, "do not run `dormant exec`"),
        (
            ["dormant", "exec", "--keep", "2", "--", "x"],
            {},
            "spec.checkpoint.keep is 1 but the pods run dormant exec --keep 2",
        ),
        (
            ["dormant", "exec", "--on-term", "stop", "--", "x"],
            {},
            "spec.onEviction is checkpoint but the pods run dormant exec --on-term stop",
        ),
        (["dormant", "exec", "--", "x"], {"onEviction": "ignore"}, "use --on-term stop"),
        (["dormant", "exec", "--", "x", "--keep", "2"], {}, ""),  # the served command's own flags
    ],
)
def test_template_problems(command: list[str], spec: Doc, problem: str) -> None:
    parsed = parse_policy(policy(**spec))
    found = template_problems(parsed, target(command=command))
    if problem:
        assert any(problem in p for p in found), found
    else:
        assert found == []


# -- Events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "view", "pods", "reason"),
    [
        (
            "Ready",
            {"state": "hibernated", "last_checkpoint": {"snapshot": "s-1", "bytes": 5}},
            [],
            "Hibernated",
        ),
        (
            "Waking",
            {"state": "ready", "last_wake": {"path": "restore", "seconds": 2.5}},
            None,
            "Restored",
        ),
        (
            "Hibernated",
            {"state": "ready", "last_wake": {"path": "boot", "seconds": 9}},
            None,
            "Booted",
        ),
        ("Ready", {"state": "failed", "last_error": "start failed: x"}, [], "Failed"),
    ],
)
def test_transitions_are_events(
    before: str, view: Doc, pods: list[Doc] | None, reason: str
) -> None:
    changes: Doc = {"activator": view}
    if pods is not None:
        changes["pods"] = pods
    result = plan(observe(policy(status={"phase": before}), **changes))
    assert reason in [e.reason for e in result.events]


def test_a_failed_checkpoint_is_an_event_once() -> None:
    view = {
        "state": "ready",
        "last_error": "checkpoint failed: busy",
        "counters": {"checkpoint_failures": 2},
    }
    first = plan(observe(activator=view, seen_checkpoint_failures=1))
    assert [e.message for e in first.events if e.reason == "CheckpointFailed"] == [
        "checkpoint failed: busy"
    ]
    assert not [
        e
        for e in plan(observe(activator=view, seen_checkpoint_failures=2)).events
        if e.reason == "CheckpointFailed"
    ]
    assert not [e for e in plan(observe(activator=view)).events if e.reason == "CheckpointFailed"]


# -- Jobs --------------------------------------------------------------------------------------


def job_policy() -> Doc:
    doc = policy(targetRef={"apiVersion": "batch/v1", "kind": "Job", "name": "train"})
    del doc["spec"]["models"], doc["spec"]["service"]
    return doc


@pytest.mark.parametrize(
    ("status", "pods", "phase"),
    [
        ({}, [pod("j", "10.244.1.5")], "Ready"),
        ({}, [pod("j", "10.244.1.5", ready=False)], "Waking"),
        ({}, [pod("j", "10.244.1.5", terminating=True)], "Hibernating"),
        (
            {},
            [pod("j", "10.244.1.5", terminating=True), pod("k", "10.244.1.6", ready=False)],
            "Waking",
        ),
        ({"succeeded": 1}, [], "Completed"),
        ({}, [], "Pending"),
    ],
)
def test_a_job_policy_follows_its_pods(status: Doc, pods: list[Doc], phase: str) -> None:
    doc = job_policy()
    job = {**target(), "status": status}
    result = plan(observe(doc, target=job, pods=pods, service=None, endpoints=None, activator=None))
    assert result.status["phase"] == phase
    assert result.service is None and result.endpoints is None


def test_done_on_exit_is_required_of_a_job_and_refused_elsewhere() -> None:
    """A server exiting 0 removes every snapshot only with --done-on-exit, the Job's opt-in:
    a Job's template needs it (or its command completing never ends the Job), a Deployment's
    must not have it (a stray SIGTERM to its server would remove every snapshot)."""
    job = parse_policy(job_policy())
    (missing,) = template_problems(job, target())
    assert "Job train run dormant exec without --done-on-exit" in missing
    assert (
        template_problems(job, target(command=["dormant", "exec", "--done-on-exit", "--", "x"]))
        == []
    )
    with_env = target()
    container = with_env["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "DORMANT_EXEC_DONE_ON_EXIT", "value": "1"}]
    assert template_problems(job, with_env) == []
    served = parse_policy(policy())
    (refused,) = template_problems(
        served, target(command=["dormant", "exec", "--done-on-exit", "--", "x"])
    )
    assert "Deployment ref-model run dormant exec with --done-on-exit" in refused
    # the served command's own flag is not exec's
    assert (
        template_problems(served, target(command=["dormant", "exec", "--", "x", "--done-on-exit"]))
        == []
    )


def test_the_plan_names_the_same_environment_variable_as_exec() -> None:
    from activator.supervisor.options import DONE_ENV
    from deploy import plan as plan_module

    assert plan_module._DONE_ENV == DONE_ENV
