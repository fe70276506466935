"""deploy/base/activator.yaml as shipped: two replicas that roll without a gap, a shutdown long
enough for held requests, and the PodDisruptionBudget component (deploy/components/
activator-pdb, policy/v1: 1.21 and newer) selecting exactly the activator's pods. Rendered, not
applied: the suite's API server (1.20) has no policy/v1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from activator.config.settings import WorkloadSettings

from .kustomize import render, render_kubectl

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
PDB = ROOT / "deploy" / "components" / "activator-pdb"
Doc = dict[str, Any]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_two_activators_roll_without_a_gap_and_outlast_held_requests() -> None:
    docs = render(BASE)
    deployment = _one(docs, "Deployment", "dormant-activator")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    config = yaml.safe_load(_one(docs, "ConfigMap", "dormant-activator")["data"]["config.yaml"])
    shutdown = float(str(config["shutdown_timeout"]).removesuffix("s"))
    wake_timeout = WorkloadSettings.__dataclass_fields__["wake_timeout"].default.default
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert wake_timeout < shutdown < grace


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl renders kustomize components")
def test_the_pdb_component_keeps_one_activator_through_a_drain(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(BASE, tmp_path)],
                "components": [os.path.relpath(PDB, tmp_path)],
            }
        )
    )
    docs = render_kubectl(tmp_path)
    pdb = _one(docs, "PodDisruptionBudget", "dormant-activator")
    assert pdb["apiVersion"] == "policy/v1"
    deployment = _one(docs, "Deployment", "dormant-activator")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert pdb["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    # nothing else selects the activator's pods as well (the model's and the operator's differ)
    others = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d is not deployment
        and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert not others
    import kubernetes_validate

    for version in ("1.25.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(pdb, version, strict=True)
