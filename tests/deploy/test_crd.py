"""The ScaleToZeroPolicy CRD comes from the settings definition: the committed file is
current, its schema is structural, and a policy means the same to the API server's schema
and to the loader (activator.config.policy)."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from activator.config.policy import LEFT_OUT, SPEC_KEYS, PolicyError, parse_policy
from activator.config.settings import WorkloadSettings
from deploy.crd import crd, render
from tests.activator.test_config_schema import _structural_problems

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "base" / "crd.yaml"
POLICY = ROOT / "deploy" / "examples" / "ref-policy.yaml"


def _policy(**spec: Any) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    doc["spec"].update(spec)
    for key in [k for k, v in spec.items() if v is None]:
        del doc["spec"][key]
    return dict(doc)


def _schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    return [".".join(map(str, e.absolute_path)) for e in validator.iter_errors(doc)]


def test_the_committed_crd_is_current() -> None:
    assert CRD_FILE.read_text() == render(), (
        "deploy/base/crd.yaml is stale: run `.venv/bin/python -m deploy.crd > deploy/base/crd.yaml`"
    )
    done = subprocess.run(
        [sys.executable, "-m", "deploy.crd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout == render()


def test_every_workload_setting_is_carried_or_left_out_with_a_reason() -> None:
    fields = {f.name for f in dataclasses.fields(WorkloadSettings)}
    assert not set(SPEC_KEYS) & set(LEFT_OUT)
    assert set(SPEC_KEYS) | set(LEFT_OUT) == fields, (
        f"classify: {fields - set(SPEC_KEYS) - set(LEFT_OUT)}"
    )
    assert all(why for why in LEFT_OUT.values())


def test_the_schema_is_structural_and_carries_the_settings_types() -> None:
    schema = _schema()
    assert _structural_problems(schema) == []
    spec = schema["properties"]["spec"]["properties"]
    assert set(SPEC_KEYS.values()) <= set(spec)
    idle = spec["idleAfter"]
    assert idle["x-kubernetes-int-or-string"] is True and idle["default"] == "5m"
    assert spec["queueDepth"]["minimum"] == 1 and spec["wakeTimeout"]["minimum"] == 1
    assert spec["targetRef"]["properties"]["kind"]["enum"] == ["Deployment", "StatefulSet", "Job"]
    columns = [c["name"] for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Target", "Phase", "Last wake", "Snapshot", "Age"]


def test_the_example_policy_passes_the_schema_and_the_loader() -> None:
    doc = _policy()
    assert _schema_errors(doc) == []
    policy = parse_policy(doc)
    assert policy.workload is not None and policy.workload.models == ("ref-small",)
    assert policy.workload.idle_after == 300 and policy.checkpoint.volume_claim == "ref-model-state"


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"idleAfter": "soon"}, "spec.idleAfter"),
        ({"idleAfter": -1}, "spec.idleAfter"),
        ({"wakeTimeout": 0}, "spec.wakeTimeout"),
        ({"queueDepth": 0}, "spec.queueDepth"),
        ({"kvCache": "sometimes"}, "spec.kvCache"),
        ({"onEviction": "panic"}, "spec.onEviction"),
        ({"targetRef": {"kind": "DaemonSet", "name": "x"}}, "spec.targetRef.kind"),
        ({"targetRef": {"kind": "Deployment"}}, "spec.targetRef.name"),
        ({"service": {"name": "x", "port": 0}}, "spec.service.port"),
        ({"checkpoint": {"engine": "magic", "volumeClaimName": "x"}}, "spec.checkpoint.engine"),
        (
            {"checkpoint": {"engine": "criu", "volumeClaimName": "x", "keep": 0}},
            "spec.checkpoint.keep",
        ),
    ],
    ids=repr,
)
def test_what_the_schema_can_say_it_refuses_and_the_loader_agrees(
    spec: dict[str, Any], path: str
) -> None:
    doc = _policy(**spec)
    errors = _schema_errors(doc)  # a missing key is reported at its parent
    assert any(path == e or path.startswith(f"{e}.") for e in errors), errors
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert str(info.value).startswith(f"{path}: "), info.value


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"service": None}, "spec.service: required for a Deployment target"),
        ({"models": None}, "spec.models: required"),
        ({"checkpoint": {"engine": "criu"}}, "spec.checkpoint.volumeClaimName: required"),
        (
            {"targetRef": {"kind": "Job", "name": "train"}},
            "spec.models: a Job's pods are not routed by model",
        ),
    ],
    ids=repr,
)
def test_what_the_schema_cannot_say_the_loader_reports_in_one_line(
    spec: dict[str, Any], message: str
) -> None:
    doc = _policy(**spec)
    assert _schema_errors(doc) == []  # the API server accepts it: status says why it is not served
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert str(info.value).startswith(message), info.value
    assert "\n" not in str(info.value)


def test_a_job_policy_needs_no_service_and_no_models() -> None:
    doc = _policy(targetRef={"kind": "Job", "apiVersion": "batch/v1", "name": "train"})
    del doc["spec"]["models"], doc["spec"]["service"]
    policy = parse_policy(copy.deepcopy(doc))
    assert policy.workload is None and policy.service is None and not policy.target.scalable
